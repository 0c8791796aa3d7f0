"""Heads: methods that score frozen image features instead of (or besides) learning prompts; one per module."""

from prompt_tuning.heads.base import Head, zero_shot_classifier

__all__ = ["Head", "zero_shot_classifier"]
