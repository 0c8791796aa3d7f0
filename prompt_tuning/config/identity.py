"""Where a run's folder is: ``<root>/<dataset>/<method>/<model>/<protocol>[-<tag>]/shots_<K>/seed_<S>``.

The folder names every choice that changes a run's numbers, so that two runs that compute different things never
share a folder: the groups (dataset, method, model, protocol), the shots and the seed, and a short readable tag
for every other override (``optim.lr=0.01 method.context.init_args.n_ctx=4`` -> ``fewshot-lr0.01-n_ctx4``). Keys
that never change the numbers (``runtime``, ``output_dir``, ``resume``, ``overwrite``, ``tags``) and the folders
data and weights are read from (``data.root``, ``model.cache_dir``) stay out of it.
A value that is a path enters as its leaf name and a digest of the path; a tag longer than `MAX_TAG` characters is
cut and ends in a digest of the whole override list, so it stays unique.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from prompt_tuning.config.hashing import NOT_HASHED

IN_PATH = ("protocol.shots", "seed")  # keys the run path spells out itself (the groups are levels of their own)
LOCATIONS = ("data.root", "model.cache_dir")  # where files are found, not what is computed
MAX_TAG = 60
_UNSAFE = re.compile(r"[^A-Za-z0-9._+]+")


def _digest(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def model_label(choice: str) -> str:
    """The model level of a run path: the model file's name (``vit_b16``), or a YAML/JSON path's stem."""
    path = Path(choice)
    return path.stem if path.suffix in (".yaml", ".yml", ".json") else _UNSAFE.sub("_", choice).strip("_") or "model"


def pairs(args: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """``["optim.lr=0.01"]`` -> ``[("optim.lr", "0.01")]``."""
    return [(key, value) for key, _, value in (a.partition("=") for a in args)]


def _part(key: str, value: str, joiner: str) -> str:
    leaf = key.rpartition(".")[2]
    if "/" in value or value.startswith("~"):  # a location: its name would be long and unsafe in a path
        return f"{leaf}{joiner}{_UNSAFE.sub('_', Path(value).name)}.{_digest(value)}"
    return f"{leaf}{joiner}{_UNSAFE.sub('_', value)}"


def tagged(key: str, in_path: tuple[str, ...] = IN_PATH) -> bool:
    """Whether an override of ``key`` enters the tag (``in_path``: keys the path spells out itself)."""
    return key not in in_path and key not in LOCATIONS and key.split(".")[0] not in NOT_HASHED


def override_tag(overrides: list[tuple[str, str]], in_path: tuple[str, ...] = IN_PATH, joiner: str = "") -> str:
    """``[("optim.lr", "0.01")]`` -> ``lr0.01`` (``joiner="_"``: ``lr_0.01``); empty when no override changes the
    numbers. ``in_path``: keys left out because the path names them already (the run path's shots and seed)."""
    kept = [(k, v) for k, v in overrides if tagged(k, in_path)]
    tag = "-".join(_part(k, v, joiner) for k, v in kept)
    if len(tag) > MAX_TAG:
        tag = tag[:MAX_TAG - 7].rstrip("-") + "-" + _digest(repr(sorted(kept)))
    return tag


def variant(overrides: list[tuple[str, str]]) -> str:
    """The suffix of the protocol level: ``-<tag>``, or empty."""
    tag = override_tag(overrides)
    return f"-{tag}" if tag else ""
