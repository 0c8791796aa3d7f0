"""Prompt methods and heads, one per module, and what they share: the contract (`base`), the prompt frame, the
zero-shot classifier, prompt hooks, objectives, gradient rules and averaging. Configs name classes by import path."""

from prompt_tuning.methods.base import Capabilities, Context, FrozenFeatures, Head, Method, Outputs, Prompts, Task

__all__ = ["Capabilities", "Context", "FrozenFeatures", "Head", "Method", "Outputs", "Prompts", "Task"]
