"""Prompt contexts (`prompt_tuning.methods.base.Context`), one method per module."""
