"""Configs: composition (defaults + groups + recipes + command line), checked instantiation, the run hash, and
experiment grids. ``from prompt_tuning.config.compose import compose`` builds a run's config."""
