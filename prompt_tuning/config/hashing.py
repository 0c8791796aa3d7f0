"""The run hash: 12 hex digits of what a run computes (its resolved config without output paths and runtime
settings), and the config flattener the hash, error messages and trackers share."""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig, OmegaConf

NOT_HASHED = ("output_dir", "runtime", "resume", "overwrite", "tags")  # keys that do not change a run's numbers


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": 0.002}}`` -> ``{"optim.lr": 0.002}`` (empty mappings stay leaves)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_hash(cfg: DictConfig) -> str:
    """12 hex digits identifying what a run computes (output paths and runtime settings excluded)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_HASHED:
        plain.pop(key, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(plain)).encode()).hexdigest()[:12]
