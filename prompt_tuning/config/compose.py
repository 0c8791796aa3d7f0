"""Config composition: ``defaults.yaml`` + one file per group + the method's recipes + command-line dotlist, in
struct mode.

``compose(["method=coop", "dataset=eurosat", "protocol.shots=4"])``:

1. ``defaults.yaml`` holds every key, with a comment each.
2. ``group=value`` picks ``<group>/<value>.yaml`` and merges it into that group's section; ``value`` may also be
   a YAML file path, a directory for ``dataset`` (a local folder in a known layout) or an open_clip JSON
   architecture file for ``model``.
3. The config is put in struct mode, then ``a.b=c`` overrides are applied: an unknown key is an error that
   lists the valid keys at that level, and a value of the wrong type (``protocol.shots=abc``) is an error.
4. ``class_path`` + ``init_args`` name the class to build; ``init_args`` are checked against the class's
   ``__init__`` signature (`prompt_tuning.config.instantiate`), so a misspelt argument is an error naming the
   valid ones.

Configs ship inside the package (``prompt_tuning/configs``, as open_clip ships its model configs), so any install
finds them; folders named in ``$PT_CONFIG_DIR`` (separated by ``os.pathsep``) are searched first, so a user's own
method, dataset or model files join the groups, and may shadow the package's.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prompt_tuning.config.identity import model_label, variant
from prompt_tuning.config.instantiate import check_init_args, check_names_early, merged
from prompt_tuning.config.recipes import Recipe, apply_recipes, leaf_keys, read_recipes
from prompt_tuning.config.schema import check_ranges, check_type
from prompt_tuning.core.errors import UserError, close_matches

GROUPS = ("model", "method", "dataset", "protocol")
PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_dirs() -> list[Path]:
    """Where config files are looked up, the first match winning: the folders of ``$PT_CONFIG_DIR``, then the
    package's own ``prompt_tuning/configs``."""
    extra = [Path(p).expanduser() for p in os.environ.get("PT_CONFIG_DIR", "").split(os.pathsep) if p]
    for path in extra:
        if not path.is_dir():
            raise UserError(f"PT_CONFIG_DIR names {path}, which is not a folder (a folder of <group>/<name>.yaml "
                            "files, e.g. method/my_method.yaml)")
    return [*extra, PACKAGE_CONFIGS]


def find_config(relative: str, roots: list[Path] | None = None) -> Path | None:
    """The first ``<root>/<relative>`` file on the config path, or None."""
    return next((r / relative for r in roots or config_dirs() if (r / relative).is_file()), None)


_LOADED: dict[tuple, DictConfig] = {}  # (real path, mtime, size, inode) -> the parsed file, for load_yaml


def load_yaml(path: str | os.PathLike, what: str = "config") -> DictConfig:
    """A YAML mapping file (a fresh copy; a file unchanged since its last read is not parsed again: a sweep
    composes the same group files for each of its runs); a syntax error is one line, ``FILE:LINE:COLUMN:
    problem``."""
    try:
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        key = None
    if key in _LOADED:
        return copy.deepcopy(_LOADED[key])
    cfg = _parse_yaml(path, what)
    if key is not None:
        if len(_LOADED) >= 512:
            _LOADED.clear()
        _LOADED[key] = copy.deepcopy(cfg)
    return cfg


def _parse_yaml(path: str | os.PathLike, what: str) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: YAML syntax error in this {what} file: {e.problem or e.context}") from e
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {what} {path}: {' '.join(str(e).split())}") from e
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{what} {path} must be a mapping of keys to values")
    return cfg


def group_options(group: str, roots: list[Path] | None = None) -> list[str]:
    """Names of the files of a config group (``<group>/*.yaml`` on the config path)."""
    return sorted({p.stem for r in roots or config_dirs() for p in (r / group).glob("*.yaml")})


def _group_config(group: str, value: str, roots: list[Path]) -> DictConfig:
    """The config a ``group=value`` choice stands for."""
    path = Path(value).expanduser()
    named = find_config(f"{group}/{value}.yaml", roots)
    if named is not None:
        return load_yaml(named)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_yaml(path)
    if group == "dataset" and path.is_dir():
        return OmegaConf.create({
            "name": path.resolve().name,
            "class_path": "prompt_tuning.data.datasets.Folder",
            "init_args": {"root": str(path.resolve())},
        })
    if group == "model" and path.suffix == ".json" and path.is_file():
        return OmegaConf.create({"name": path.stem, "pretrained": None, "arch": str(path.resolve())})
    options = group_options(group, roots)
    extra = {"dataset": ", a dataset folder", "model": ", an open_clip architecture .json"}.get(group, "")
    looked = f"no file or folder {path}" if len(path.parts) > 1 or path.suffix else (
        f"no {group}/{value}.yaml in {' or '.join(map(str, roots))}")
    raise UserError(
        f"{group}={value!r}: {looked}{close_matches(value, options)}; choose one of "
        f"{', '.join(options) or '(none)'}, a YAML file{extra}"
    )


@dataclass

class Composed:
    """A composed config and where its recipe values came from.

    Attributes:
        cfg: the resolved run config.
        sources: dotted key -> where its value came from, for every key a method recipe set (the recipe's
            ``source``) or the command line overrode (``command line``).
        recipe_values: dotted key -> (value, source) for the recipe values that differ from what the key would
            be without the method's recipes.
    """

    cfg: DictConfig
    sources: dict[str, str] = field(default_factory=dict)
    recipe_values: dict[str, tuple[Any, str]] = field(default_factory=dict)


def compose(args: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Build the resolved run config from command-line style ``key=value`` arguments."""
    return compose_annotated(args).cfg


def compose_annotated(args: list[str] | tuple[str, ...] = ()) -> Composed:
    """`compose`, also telling where each recipe-set value came from.

    Order: ``defaults.yaml``, the group files, the method's ``recipes`` that match the run (in file order, later
    ones win), then the command-line overrides. A recipe's ``when`` is tested on the config *with* the overrides
    (``protocol.shots=4`` on the command line selects the 4-shot recipe) and nothing is resolved before the end,
    so interpolations such as ``output_dir`` follow every value that is set later.
    """
    roots = config_dirs()
    cfg = load_yaml(find_config("defaults.yaml", roots))
    choices = OmegaConf.to_container(cfg.pop("defaults", {}))
    overrides = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UserError(f"argument {arg!r} is not of the form key=value")
        if key in GROUPS:
            choices[key] = value
        else:
            overrides.append((key, value))
    for group in GROUPS:
        value = choices.get(group)
        if value in (None, "???"):
            raise UserError(f"choose a {group}: {group}=NAME with NAME one of {', '.join(group_options(group, roots))}")
        cfg[group] = merged(cfg[group], _group_config(group, str(value), roots))
    recipes = read_recipes(cfg.method.pop("recipes"), f"method {cfg.method.get('name')}", cfg)
    cfg.runtime.model = model_label(str(choices["model"]))
    cfg.runtime.variant = variant(overrides)  # a sweep's runtime.variant= override names its own
    OmegaConf.set_struct(cfg, True)
    open_init_args(cfg)
    plain = _with_overrides(cfg, overrides)
    matched: list[Recipe] = []
    for _ in range(len(recipes) + 1):  # a recipe may set a key that another recipe's `when` reads
        with_recipes = _with_overrides(apply_recipes(cfg, matched), overrides) if matched else copy.deepcopy(plain)
        now = [r for r in recipes if r.matches(with_recipes)]
        if now == matched:
            break
        matched = now
    else:
        raise UserError(f"the recipes of method {cfg.method.name} do not settle: each one's `when` changes "
                        "which others apply")
    cfg = with_recipes
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"these keys need a value: {', '.join(missing)}")
    from_env = environment_keys(cfg)
    for c in (cfg, plain):
        try:
            OmegaConf.resolve(c)
        except OmegaConfBaseException as e:
            raise UserError(f"config interpolation failed: {' '.join(str(e).split())[:300]}") from e
    cfg.runtime.env = {k: v.replace("${", "\\${") for k, v in from_env.items()}  # kept as text, not resolved
    check_ranges(cfg)
    check_names_early(cfg)  # a misspelt argument in a second, before torch is imported
    check_init_args(cfg)
    sources = {key: r.source for r in matched for key in leaf_keys(r.values)}
    recipe_values = {}
    for key, source in sources.items():
        value, default = OmegaConf.select(cfg, key), OmegaConf.select(plain, key)
        if value != default:
            recipe_values[key] = (value, source)
    sources.update({key: "command line" for key, _ in overrides})
    return Composed(cfg, sources, recipe_values)


def _with_overrides(cfg: DictConfig, overrides: list[tuple[str, str]]) -> DictConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied."""
    out = copy.deepcopy(cfg)
    apply_overrides(out, overrides)
    return out


def apply_overrides(cfg: DictConfig, overrides: list[tuple[str, str]]) -> None:
    """Apply ``key=value`` overrides to a struct config (``init_args`` and ``tags`` stay open)."""
    open_init_args(cfg)
    for key, value in overrides:
        _override(cfg, key, value)


_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")  # an interpolation of another key, ${a.b}


def environment_keys(cfg: DictConfig) -> dict[str, str]:
    """The keys of an unresolved config whose values come from environment variables (``${oc.env:...}``, or an
    interpolation of such a key), each with its interpolation: what files record instead of the values, which
    may be secrets or one machine's paths."""
    raw = {}
    for key, value in _leaves(cfg):
        if isinstance(value, str) and "${" in value:
            raw[key] = value
    derived = {k: v for k, v in raw.items() if "${oc.env:" in v}
    while True:  # keys that interpolate an environment-derived key are derived too
        more = {k: v for k, v in raw.items() if k not in derived and any(
            ref in derived for ref in _REFERENCE.findall(v))}
        if not more:
            return derived
        derived.update(more)


def _leaves(node: Any, prefix: str = ""):
    """(dotted key, raw value) of every leaf, interpolations unresolved."""
    if isinstance(node, DictConfig):
        for key in node:
            yield from _leaves(node._get_node(key), f"{prefix}{key}.")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _leaves(node._get_node(i), f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node._value()


def without_environment(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the interpolations of `environment_keys` (``runtime.env``) in place of their values."""
    out = copy.deepcopy(cfg)
    for key, interpolation in (OmegaConf.select(cfg, "runtime.env", default=None) or {}).items():
        if OmegaConf.select(out, key, default=None) is not None:
            OmegaConf.update(out, key, interpolation, merge=False, force_add=True)
    return out


def annotated_yaml(cfg: DictConfig, sources: dict[str, str]) -> str:
    """``cfg`` as YAML with ``# source`` beside every value whose dotted key is in ``sources``; values that come
    from environment variables are written as their interpolations (`without_environment`)."""
    lines, stack = [], []  # stack of (indent, key) down to the current line
    for line in OmegaConf.to_yaml(without_environment(cfg)).splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if stripped.startswith("- ") or ":" not in stripped:
            lines.append(line)
            continue
        key = stripped.split(":", 1)[0].strip("'\"")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = ".".join(k for _, k in stack)
        lines.append(f"{line}  # {sources[path]}" if path in sources else line)
    return "\n".join(lines) + "\n"


def open_init_args(cfg: Any) -> None:
    """``init_args`` are free-form (checked against the class signature instead of a fixed schema); so are
    ``tags``."""
    if isinstance(cfg, DictConfig):
        for key in cfg:
            node = cfg._get_node(key)
            if key in ("init_args", "tags") and isinstance(node, DictConfig):
                OmegaConf.set_struct(node, False)
            else:
                open_init_args(node)


def _parse(value: str) -> Any:
    """A command-line value, typed as YAML types it (``4`` int, ``true`` bool, ``null`` None, ``[1,2]`` list);
    interpolations (``${seed}``) are kept, to be resolved with the whole config."""
    if value == "":
        return ""
    try:
        node = OmegaConf.from_dotlist([f"v={value}"])._get_node("v")
    except yaml.YAMLError:  # not YAML (``{} and {}``): the text as written
        return value
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=False)
    return node._value()


def _override(cfg: DictConfig, key: str, value: str) -> None:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        raise UserError(f"{key}={value}: {parent_key!r} is not a config section")
    new = _parse(value)
    if leaf not in parent and leaf.isdigit() and int(leaf) in parent:  # integer keys: protocol.epochs.16
        leaf = int(leaf)
    if leaf not in parent:
        if OmegaConf.is_struct(parent):
            valid = sorted(str(k) for k in parent)
            raise UserError(
                f"unknown config key {key!r}{close_matches(leaf, valid)}; valid keys of "
                f"{parent_key or 'the top level'}: {', '.join(valid)}"
            )
    elif "init_args" not in key.split("."):  # init_args are typed by their class's signature (check_init_args)
        old = parent._get_node(leaf)._value() if not OmegaConf.is_missing(parent, leaf) else None
        check_type(key, old, new)
        if leaf == "class_path" and old != new and "init_args" in parent:  # another class: its own arguments
            parent["init_args"] = {}
            OmegaConf.set_struct(parent.init_args, False)
    parent[leaf] = new
    open_init_args(parent)  # a section set whole (init_args={...}) stays as open as the one it replaced


def dataset_section(name: str, data_root: str | None = None) -> DictConfig:
    """The composed ``dataset`` section of ``configs/dataset/<name>.yaml`` (or a folder), under ``data_root``."""
    args = [f"dataset={name}", "model=tiny"]  # any model: only the dataset section is read
    return compose(args + ([f"data.root={data_root}"] if data_root else [])).dataset


def compose_saved(path: str | Path, args: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """A run's saved, resolved config (its ``config.yaml``), with ``key=value`` changes (``dataset=NAME`` swaps
    the whole group); keys added to the defaults since the run was made take their defaults."""
    roots = config_dirs()
    base = load_yaml(find_config("defaults.yaml", roots))
    base.pop("defaults", None)
    base.method.pop("recipes", None)  # already applied when the run was composed
    cfg = merged(base, load_yaml(path))
    overrides = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserError(f"argument {arg!r} is not of the form key=value")
        if key in GROUPS:  # the group's defaults, then its file
            cfg[key] = merged(load_yaml(find_config("defaults.yaml", roots))[key], _group_config(key, value, roots))
        else:
            overrides.append((key, value))
    OmegaConf.set_struct(cfg, True)
    apply_overrides(cfg, overrides)
    check_ranges(cfg)
    check_init_args(cfg)
    return cfg
