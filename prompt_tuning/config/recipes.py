"""Method recipes: the authors' settings per dataset, protocol and shots, as ``{when, set, source}`` entries of a
method YAML, merged over the defaults (before the command line) where their ``when`` matches the run."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prompt_tuning.config.instantiate import merged
from prompt_tuning.core.errors import UserError

WHEN_ALIASES = {"dataset": "dataset.name", "protocol": "protocol.name", "shots": "protocol.shots",
                "model": "model.name", "method": "method.name"}


_ABSENT = object()


@dataclass(frozen=True)

class Recipe:
    """One entry of a method's ``recipes``: the values of ``set`` apply to runs that match every ``when`` key
    (a value or a list of accepted values); ``source`` names the paper or the authors' file they come from."""

    when: tuple[tuple[str, tuple], ...]
    values: Any  # a DictConfig merged over the config
    source: str
    index: int

    def matches(self, cfg: DictConfig) -> bool:
        return all(OmegaConf.select(cfg, key) in accepted for key, accepted in self.when)


def read_recipes(raw: Any, where: str, cfg: DictConfig) -> list[Recipe]:
    """Check a method's ``recipes`` list; errors name the entry and the bad key."""
    if raw is None:
        return []
    if not isinstance(raw, ListConfig):
        raise UserError(f"{where}: recipes must be a list of {{when, set, source}} entries")
    recipes = []
    for i, entry in enumerate(raw):
        here = f"{where}: recipes[{i}]"
        if not isinstance(entry, DictConfig) or set(entry) - {"when", "set", "source"} or "set" not in entry:
            shown = OmegaConf.to_container(entry) if isinstance(entry, DictConfig | ListConfig) else entry
            raise UserError(f"{here} must be a mapping with 'set' (and optionally 'when', 'source'), got {shown!r}")
        when = []
        for key, accepted in (entry.get("when") or {}).items():
            path = WHEN_ALIASES.get(str(key), str(key))
            if OmegaConf.select(cfg, path, default=_ABSENT, throw_on_resolution_failure=False) is _ABSENT:
                raise UserError(f"{here}.when: unknown config key {key!r} (use dataset, protocol, shots, model, "
                                "method or a dotted config key)")
            values = list(accepted) if isinstance(accepted, ListConfig) else [accepted]
            when.append((path, tuple(values)))
        if not isinstance(entry.set, DictConfig):
            raise UserError(f"{here}.set must be a mapping of config keys to values")
        recipes.append(Recipe(tuple(when), entry.set, str(entry.get("source") or f"{where} recipes[{i}]"), i))
    return recipes


def apply_recipes(cfg: DictConfig, recipes: list[Recipe]) -> DictConfig:
    """``cfg`` with the ``set`` of each recipe merged over it, in order (struct mode: unknown keys are errors)."""
    out = copy.deepcopy(cfg)
    for r in recipes:
        try:
            out = merged(out, r.values)
        except OmegaConfBaseException as e:
            raise UserError(f"method {cfg.method.name}: recipes[{r.index}] ({r.source}): {e.msg}") from e
    return out


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf under ``node``."""
    if isinstance(node, DictConfig):
        return [k for key in node for k in leaf_keys(node._get_node(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")]
