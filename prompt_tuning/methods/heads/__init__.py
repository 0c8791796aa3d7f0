"""Heads (`prompt_tuning.methods.base.Head`): methods that score frozen image features, one per module."""
