"""Learnable prompt contexts, one method per module; configs name them by import path."""

from prompt_tuning.contexts.base import Context, Prompts, Task

__all__ = ["Context", "Prompts", "Task"]
