"""Config composition: ``defaults.yaml`` + one file per group + command-line dotlist, in struct mode.

``compose(["method=coop", "dataset=eurosat", "protocol.shots=4"])``:

1. ``configs/defaults.yaml`` holds every key, with a comment each.
2. ``group=value`` picks ``configs/<group>/<value>.yaml`` and merges it into that group's section; ``value``
   may also be a YAML file path, a directory for ``dataset`` (a local folder in a known layout) or an
   open_clip JSON architecture file for ``model``.
3. The config is put in struct mode, then ``a.b=c`` overrides are applied: an unknown key is an error that
   lists the valid keys at that level, and a value of the wrong type (``protocol.shots=abc``) is an error.
4. ``class_path`` + ``init_args`` name the class to build; ``init_args`` are checked against the class's
   ``__init__`` signature, so a misspelt argument is an error naming the valid ones.
"""

from __future__ import annotations

import collections.abc
import copy
import hashlib
import importlib
import inspect
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prompt_tuning.errors import UserError, close_matches

GROUPS = ("model", "method", "dataset", "protocol")
INJECTED = {"clip", "task"}  # constructor arguments the runner provides, never set in a config
NOT_HASHED = ("output_dir", "runtime", "resume", "overwrite", "tags")  # keys that do not change a run's numbers


def config_dir() -> Path:
    """The ``configs/`` folder: ``$PT_CONFIG_DIR`` or the one beside the package (an editable install)."""
    path = Path(os.environ.get("PT_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))
    if not (path / "defaults.yaml").is_file():
        raise UserError(
            f"no configs/defaults.yaml under {path}: install the repository with 'pip install -e .' "
            "or point PT_CONFIG_DIR at its configs/ folder"
        )
    return path


def load_yaml(path: str | os.PathLike, what: str = "config") -> DictConfig:
    """A YAML mapping file; a syntax error is one line, ``FILE:LINE:COLUMN: problem``."""
    import yaml

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


def group_options(group: str, root: Path | None = None) -> list[str]:
    """Names of the files of a config group (``configs/<group>/*.yaml``)."""
    return sorted(p.stem for p in ((root or config_dir()) / group).glob("*.yaml"))


def _group_config(group: str, value: str, root: Path) -> DictConfig:
    """The config a ``group=value`` choice stands for."""
    path = Path(value).expanduser()
    named = root / group / f"{value}.yaml"
    if named.is_file():
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
    options = group_options(group, root)
    extra = {"dataset": ", a dataset folder", "model": ", an open_clip architecture .json"}.get(group, "")
    raise UserError(
        f"{group}={value!r}: no {named}{close_matches(value, options)}; choose one of "
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


def compose(args: list[str] | tuple[str, ...] = (), root: Path | None = None) -> DictConfig:
    """Build the resolved run config from command-line style ``key=value`` arguments."""
    return compose_annotated(args, root).cfg


def compose_annotated(args: list[str] | tuple[str, ...] = (), root: Path | None = None) -> Composed:
    """`compose`, also telling where each recipe-set value came from.

    Order: ``defaults.yaml``, the group files, the method's ``recipes`` that match the run (in file order, later
    ones win), then the command-line overrides. A recipe's ``when`` is tested on the config *with* the overrides
    (``protocol.shots=4`` on the command line selects the 4-shot recipe) and nothing is resolved before the end,
    so interpolations such as ``output_dir`` follow every value that is set later.
    """
    root = root or config_dir()
    cfg = load_yaml(root / "defaults.yaml")
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
            raise UserError(f"choose a {group}: {group}=NAME with NAME one of {', '.join(group_options(group, root))}")
        cfg[group] = OmegaConf.merge(cfg[group], _group_config(group, str(value), root))
    recipes = _read_recipes(cfg.method.pop("recipes"), f"method {cfg.method.get('name')}", cfg)
    OmegaConf.set_struct(cfg, True)
    _open_init_args(cfg)
    plain = _with_overrides(cfg, overrides)
    matched: list[Recipe] = []
    for _ in range(len(recipes) + 1):  # a recipe may set a key that another recipe's `when` reads
        with_recipes = _with_overrides(_apply_recipes(cfg, matched), overrides)
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
    for c in (cfg, plain):
        try:
            OmegaConf.resolve(c)
        except OmegaConfBaseException as e:
            raise UserError(f"config interpolation failed: {e}") from e
    check_ranges(cfg)
    _check_init_args(cfg)
    sources = {key: r.source for r in matched for key in _leaf_keys(r.values)}
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
    _apply_overrides(out, overrides)
    return out


def _apply_overrides(cfg: DictConfig, overrides: list[tuple[str, str]]) -> None:
    """Apply ``key=value`` overrides to a struct config (``init_args`` and ``tags`` stay open)."""
    _open_init_args(cfg)
    for key, value in overrides:
        _override(cfg, key, value)


# ---------------------------------------------------------------------------------------------- recipes
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


def _read_recipes(raw: Any, where: str, cfg: DictConfig) -> list[Recipe]:
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


def _apply_recipes(cfg: DictConfig, recipes: list[Recipe]) -> DictConfig:
    """``cfg`` with the ``set`` of each recipe merged over it, in order (struct mode: unknown keys are errors)."""
    out = copy.deepcopy(cfg)
    for r in recipes:
        try:
            out = OmegaConf.merge(out, r.values)
        except OmegaConfBaseException as e:
            raise UserError(f"method {cfg.method.name}: recipes[{r.index}] ({r.source}): {e.msg}") from e
    return out


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf under ``node``."""
    if isinstance(node, DictConfig):
        return [k for key in node for k in _leaf_keys(node._get_node(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def annotated_yaml(cfg: DictConfig, sources: dict[str, str]) -> str:
    """``cfg`` as YAML with ``# source`` beside every value whose dotted key is in ``sources``."""
    lines, stack = [], []  # stack of (indent, key) down to the current line
    for line in OmegaConf.to_yaml(cfg).splitlines():
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


def _open_init_args(cfg: Any) -> None:
    """``init_args`` are free-form (checked against the class signature instead of a fixed schema); so are
    ``tags``."""
    if isinstance(cfg, DictConfig):
        for key in cfg:
            node = cfg._get_node(key)
            if key in ("init_args", "tags") and isinstance(node, DictConfig):
                OmegaConf.set_struct(node, False)
            else:
                _open_init_args(node)


def _parse(value: str) -> Any:
    """A command-line value, typed as YAML types it (``4`` int, ``true`` bool, ``null`` None, ``[1,2]`` list);
    interpolations (``${seed}``) are kept, to be resolved with the whole config."""
    if value == "":
        return ""
    node = OmegaConf.from_dotlist([f"v={value}"])._get_node("v")
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
    elif "init_args" not in key.split("."):  # init_args are typed by their class's signature (_check_init_args)
        old = parent._get_node(leaf)._value() if not OmegaConf.is_missing(parent, leaf) else None
        _check_type(key, old, new)
    parent[leaf] = new


def _check_type(key: str, old: Any, new: Any) -> None:
    if old is None or new is None or isinstance(old, str) and old.startswith("${"):
        return
    ok = {
        bool: (bool,),
        int: (int,),
        float: (int, float),
        str: (str, int, float, bool),
    }
    for kind, accepted in ok.items():
        if type(old) is kind:
            if type(new) not in accepted or (kind is not bool and type(new) is bool):
                raise UserError(f"{key}={new!r}: expected {kind.__name__}, like the current value {old!r}")
            return
    if isinstance(old, DictConfig | ListConfig) and type(new) in (int, float, bool, str):
        raise UserError(f"{key}={new!r}: expected a {'mapping' if isinstance(old, DictConfig) else 'list'}")


# ------------------------------------------------------------------------------------------- value ranges
# Every numeric key of the schema with the values it accepts: (test, what the error says). None is accepted
# where the key's default is null (optional).
_INT = (int,)
_NUM = (int, float)
RANGES: dict[str, tuple[tuple, Any, str]] = {
    "seed": (_INT, lambda v: v >= 0, "an integer >= 0"),
    "protocol.shots": (_INT, lambda v: v == -1 or v >= 1, "images per class >= 1, or -1 for all"),
    "optim.lr": (_NUM, lambda v: v > 0, "a number > 0"),
    "optim.momentum": (_NUM, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.weight_decay": (_NUM, lambda v: v >= 0, "a number >= 0"),
    "optim.max_epochs": (_INT, lambda v: v >= 1, "an integer >= 1 (or null: protocol.epochs[shots])"),
    "optim.warmup_epochs": (_INT, lambda v: v >= 0, "an integer >= 0"),
    "optim.warmup_lr": (_NUM, lambda v: v >= 0, "a number >= 0"),
    "optim.eps": (_NUM, lambda v: v > 0, "a number > 0"),
    "optim.optimizer": ((str,), lambda v: v in ("sgd", "adamw"), "sgd or adamw"),
    "optim.interval": ((str,), lambda v: v in ("epoch", "step"), "epoch or step"),
    "data.batch_size": (_INT, lambda v: v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (_INT, lambda v: v >= 1, "an integer >= 1"),
    "data.cache_views": (_INT, lambda v: v >= 0, "an integer >= 0"),
    "dataset.n_classes": (_INT, lambda v: v >= 1, "an integer >= 1 (or null)"),
    "trainer.check_val_every_n_epoch": (_INT, lambda v: v >= 1, "an integer >= 1 (or null: no validation)"),
    "trainer.log_every_n_steps": (_INT, lambda v: v >= 1, "an integer >= 1"),
    "trainer.devices": (_INT, lambda v: v >= 1, "an integer >= 1 (processes, one per GPU)"),
    "runtime.num_workers": (_INT, lambda v: v >= 0, "an integer >= 0"),
    "runtime.text_chunk": (_INT, lambda v: v >= 0, "an integer >= 0 (0: no chunks)"),
}


def check_ranges(cfg: DictConfig) -> None:
    """Every numeric key within its range (`RANGES`), and the few structured numeric values; one-line errors
    naming the key, the value and what is accepted."""
    for key, (kinds, ok, accepted) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if type(value) not in kinds or not ok(value):
            raise UserError(f"{key}={value!r}: expected {accepted}")
    scale = OmegaConf.select(cfg, "data.crop_scale", default=None)
    if scale is not None and not (len(scale) == 2 and all(type(v) in _NUM for v in scale)
                                  and 0 < scale[0] <= scale[1] <= 1):
        raise UserError(f"data.crop_scale={list(scale)!r}: expected [min, max] with 0 < min <= max <= 1")
    for shots, epochs in (OmegaConf.select(cfg, "protocol.epochs", default=None) or {}).items():
        if type(epochs) is not int or epochs < 1:
            raise UserError(f"protocol.epochs.{shots}={epochs!r}: expected an integer >= 1")


# ----------------------------------------------------------------------------------------- instantiation
def import_class(class_path: str, where: str = "class_path") -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"{where}={class_path!r} cannot be imported: {e}") from e


def _specs(cfg: DictConfig, prefix: str = ""):
    """Every (dotted key, node) with a ``class_path`` in the config."""
    for key in cfg:
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            full = f"{prefix}{key}"
            if "class_path" in node:
                yield full, node
            yield from _specs(node, full + ".")


def _check_init_args(cfg: DictConfig) -> None:
    for key, spec in _specs(cfg):
        cls = import_class(spec.class_path, f"{key}.class_path")
        params = inspect.signature(cls).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        valid = [n for n in params if n not in INJECTED]
        args = spec.get("init_args") or {}
        for arg in args:
            if arg not in valid:
                raise UserError(
                    f"{key}.init_args.{arg}: not an argument of {spec.class_path}{close_matches(arg, valid)}; "
                    f"valid: {', '.join(valid)}"
                )
            value = args[arg]
            value = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
            hint = annotation_of(cls, params[arg])
            if not accepts(value, hint):
                raise UserError(f"{key}.init_args.{arg}={value!r}: expected {_type_name(hint)} "
                                f"(the argument's type in {spec.class_path})")


_NOT_CHECKED = object()


def annotation_of(cls: type, param: inspect.Parameter) -> Any:
    """The evaluated type annotation of a constructor argument, or `_NOT_CHECKED` when it has none or names
    something only a type checker sees."""
    hint = param.annotation
    if hint is inspect.Parameter.empty:
        return _NOT_CHECKED
    if isinstance(hint, str):
        import sys

        module = sys.modules.get(getattr(cls, "__module__", ""), None)
        namespace = {**typing.__dict__, **collections.abc.__dict__, **vars(module)} if module else {}
        try:
            hint = eval(hint, namespace)  # noqa: S307 - an annotation string of an imported class, not config text
        except Exception:  # noqa: BLE001 - a name imported for type checkers only: not checked here
            return _NOT_CHECKED
    return hint


def accepts(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type annotation (unions, Optional, Literal, list/tuple/Sequence, dict,
    int/float/str/bool; anything else is left to the class)."""
    if hint is _NOT_CHECKED or hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(accepts(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is float:
        return type(value) in (int, float)
    if hint in (int, str, bool):
        return type(value) is hint
    sequence = hint if origin is None else origin
    if sequence in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return False
        if sequence is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(accepts(v, a) for v, a in zip(value, args))
        return not args or all(accepts(v, args[0]) for v in value)
    if sequence in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def instantiate(spec: DictConfig | dict, **injected: Any) -> Any:
    """Build ``spec.class_path(**spec.init_args, **injected)``; only the injected arguments that the class names
    in its signature are passed, so a class that needs no ``task`` need not accept one."""
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    cls = import_class(spec["class_path"])
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in injected.items() if k in params}
    kwargs.update(spec.get("init_args") or {})
    return cls(**kwargs)


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


def dataset_section(name: str, data_root: str | None = None) -> DictConfig:
    """The composed ``dataset`` section of ``configs/dataset/<name>.yaml`` (or a folder), under ``data_root``."""
    args = [f"dataset={name}", "model=tiny"]  # any model: only the dataset section is read
    return compose(args + ([f"data.root={data_root}"] if data_root else [])).dataset


def compose_from_run(run_dir: str | Path, args: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """A finished run's saved config, with ``key=value`` changes (``dataset=NAME`` swaps the whole group)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder: it has no config.yaml")
    root = config_dir()
    base = load_yaml(root / "defaults.yaml")
    base.pop("defaults", None)
    base.method.pop("recipes", None)  # already applied when the run was composed
    cfg = OmegaConf.merge(base, load_yaml(path))  # keys added since the run was made take their defaults
    overrides = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserError(f"argument {arg!r} is not of the form key=value")
        if key in GROUPS:  # the group's defaults, then its file
            cfg[key] = OmegaConf.merge(load_yaml(root / "defaults.yaml")[key], _group_config(key, value, root))
        else:
            overrides.append((key, value))
    OmegaConf.set_struct(cfg, True)
    _apply_overrides(cfg, overrides)
    check_ranges(cfg)
    _check_init_args(cfg)
    return cfg
