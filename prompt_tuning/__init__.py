"""prompt-tuning: prompt learning on frozen vision-language models (CLIP and its open_clip relatives)."""

__version__ = "0.1.0"

_LAZY = {"load_head": "prompt_tuning.apps.export", "export_head": "prompt_tuning.apps.export",
         "ExportedHead": "prompt_tuning.apps.export"}


def __getattr__(name: str):
    """``prompt_tuning.load_head`` and friends, imported on first use (the package itself stays light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prompt_tuning' has no attribute {name!r}")
