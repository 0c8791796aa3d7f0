"""The frozen vision-language model: loading, the exact text passes, the image pass, hook points in both towers."""

from prompt_tuning.backbone.clip import FrozenCLIP, TextPassOptions
from prompt_tuning.backbone.hooks import Hook, Hooks, Layout, Projections
from prompt_tuning.backbone.loading import Preprocess, weights_status

__all__ = ["FrozenCLIP", "Hook", "Hooks", "Layout", "Preprocess", "Projections", "TextPassOptions", "weights_status"]
