"""Building objects a config names: ``class_path`` + ``init_args``, checked against the class's ``__init__``
signature (names and types), and only for subclasses of the base its slot expects, as LightningCLI does: a shared
config or experiment file cannot call arbitrary code."""

from __future__ import annotations

import ast
import collections.abc
import copy
import functools
import importlib
import importlib.util
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from prompt_tuning.core.errors import UserError, close_matches

# constructor arguments the run provides, never set in init_args, and where they come from
INJECTED = {"clip": "the frozen model", "task": "the class set", "params": "the method's learned tensors",
            "lr": "optim.lr", "weight_decay": "optim.weight_decay"}

# the config keys that name a class to build, and the base class each expects (by name, imported when checked)
SLOTS = {"dataset": "prompt_tuning.data.datasets.Dataset",
         "method.context": "prompt_tuning.methods.base.Method",
         "method.objective": "prompt_tuning.methods.objectives.Objective",
         "method.gradient_rule": "prompt_tuning.methods.gradients.GradientRule",
         "method.averaging": "prompt_tuning.methods.averaging.Averaging",
         "optim.optimizer": "torch.optim.Optimizer",
         "optim.scheduler": "prompt_tuning.runs.schedules.Schedule"}


def merged(base: DictConfig, over: Any) -> DictConfig:
    """``OmegaConf.merge(base, over)``, except that a ``{class_path, init_args}`` whose class ``over`` changes
    starts from ``over``'s ``init_args`` alone: the old class's arguments never reach the new class (as
    LightningCLI does)."""
    base = copy.deepcopy(base)
    reset_changed_specs(base, over)
    return OmegaConf.merge(base, over)


def reset_changed_specs(base: Any, over: Any) -> None:
    """Empty the ``init_args`` of every spec in ``base`` whose ``class_path`` ``over`` sets to another class."""
    if not isinstance(base, DictConfig) or not isinstance(over, DictConfig | dict):
        return
    if ("class_path" in over and "class_path" in base and not OmegaConf.is_missing(base, "class_path")
            and over["class_path"] != base["class_path"]):
        base["init_args"] = {}
        OmegaConf.set_struct(base.init_args, False)  # init_args are free-form (checked by the signature)
    for key in over:
        if key in base and not OmegaConf.is_missing(base, key):
            reset_changed_specs(base._get_node(key), over[key])


def import_class(class_path: str, where: str = "class_path") -> type:
    """The object ``module.path.Name`` names (imported, not called)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"{where}={class_path!r} cannot be imported: {e}") from e


def specs(cfg: DictConfig, prefix: str = ""):
    """Every (dotted key, node) with a ``class_path`` in the config."""
    for key in cfg:
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            full = f"{prefix}{key}"
            if "class_path" in node:
                yield full, node
            yield from specs(node, full + ".")


def check_class(cls: Any, base: str | type | tuple[type, ...], where: str, class_path: str) -> None:
    """Refuse ``cls`` unless it is a subclass of ``base`` (a class, classes, or a class's dotted name)."""
    bases = (import_class(base, "base"),) if isinstance(base, str) else base if isinstance(base, tuple) else (base,)
    if not (isinstance(cls, type) and issubclass(cls, bases)):
        expected = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)
        raise UserError(f"{where}={class_path!r} is not a subclass of {expected}: a config names only classes "
                        "of the kind its key expects")


def check_init_args(cfg: DictConfig) -> None:
    """Every ``class_path`` of the config sits at a key that builds a class (`SLOTS`) and names a subclass of
    that key's base (imported, never called); every ``init_args`` names arguments of its class, with values of
    their annotated types."""
    for key, spec in specs(cfg):
        if key not in SLOTS:
            raise UserError(f"{key}.class_path: nothing is built from this key; classes are named only at "
                            f"{', '.join(SLOTS)}")
        if OmegaConf.is_missing(spec, "class_path"):
            continue
        cls = import_class(spec.class_path, f"{key}.class_path")
        check_class(cls, SLOTS[key], f"{key}.class_path", spec.class_path)
        params = inspect.signature(cls).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        args = spec.get("init_args") or {}
        check_arg_names(key, spec.class_path, list(args), list(params))
        for arg in args:
            value = args[arg]
            value = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
            hint = annotation_of(cls, params[arg])
            if not accepts(value, hint):
                braces = "; YAML reads {...} as a mapping: quote the text" if isinstance(value, dict) else ""
                raise UserError(f"{key}.init_args.{arg}={value!r}: expected {_type_name(hint)} "
                                f"(the argument's type in {spec.class_path}){braces}")


def check_arg_names(key: str, class_path: str, args: list[str], params: list[str]) -> None:
    """Every name of ``args`` is one of the constructor's ``params`` that a config sets (not one the run
    injects)."""
    valid = [n for n in params if n not in INJECTED]
    for arg in args:
        if arg in INJECTED and arg in params:
            raise UserError(f"{key}.init_args.{arg}: set by the run ({INJECTED[arg]}), not in init_args")
        if arg not in valid:
            raise UserError(f"{key}.init_args.{arg}: not an argument of {class_path}{close_matches(arg, valid)}; "
                            f"valid: {', '.join(valid) or 'none (it takes no arguments)'}")


def source_parameters(class_path: str) -> tuple[str, ...] | None:
    """The parameter names of a class's own ``__init__``, read from its module's source without importing it
    (importing a method's module imports torch and open_clip: seconds). None where the source cannot say: no
    source file, the class or its ``__init__`` not defined there, or ``**kwargs``."""
    module, _, name = class_path.rpartition(".")
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level spec: nothing is executed
    except (ImportError, ValueError):
        return None
    if spec is None or (rest and not spec.submodule_search_locations):
        return None
    path = Path(spec.origin or "")
    if rest:
        path = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest)
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    try:
        st = path.stat()
    except OSError:
        return None
    return _init_parameters(str(path), st.st_mtime_ns, st.st_size, name)


@functools.lru_cache(maxsize=256)
def _init_parameters(path: str, mtime_ns: int, size: int, name: str) -> tuple[str, ...] | None:
    """`source_parameters` of class ``name`` in the file ``path`` as it is at ``mtime_ns`` and ``size``."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    a = item.args
                    if a.kwarg is not None:
                        return None
                    return tuple(x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs])[1:]  # without self
            return None
    return None


def check_names_early(cfg: DictConfig) -> None:
    """A misspelt ``init_args`` name, said from the class's source before its module is imported (the full
    check, `check_init_args`, follows and covers what the source cannot say)."""
    for key, spec in specs(cfg):
        if key in SLOTS and not OmegaConf.is_missing(spec, "class_path") and str(spec.class_path).startswith(
                "prompt_tuning."):  # the toolkit's own classes; any other is first checked to be of the slot's kind
            params = source_parameters(str(spec.class_path))
            if params is not None:
                check_arg_names(key, spec.class_path, list(spec.get("init_args") or {}), params)


_NOT_CHECKED = object()


def annotation_of(cls: type, param: inspect.Parameter) -> Any:
    """The evaluated type annotation of a constructor argument, or `_NOT_CHECKED` when it has none or names
    something only a type checker sees."""
    hint = param.annotation
    if hint is inspect.Parameter.empty:
        return _NOT_CHECKED
    if isinstance(hint, str):
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


def instantiate(spec: DictConfig | dict, base: str | type | tuple[type, ...], where: str = "class_path",
                **injected: Any) -> Any:
    """Build ``spec.class_path(**spec.init_args, **injected)``, where the class is a subclass of ``base`` (the slot's
    contract: a class, classes, or the dotted name of a class, as in `SLOTS`), checked before anything is
    called; only the injected arguments that the class names in its signature
    are passed, so a class that needs no ``task`` need not accept one."""
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    cls = import_class(spec["class_path"], where)
    check_class(cls, base, where, spec["class_path"])
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in injected.items() if k in params}
    kwargs.update(spec.get("init_args") or {})
    try:
        return cls(**kwargs)
    except UserError as e:  # "depth=9: ..." names the argument: say the config key (method.context.init_args.depth)
        named = _ARG_NAMED.match(str(e))
        if named and named.group(1) in params and where.endswith("class_path") and where != "class_path":
            raise UserError(f"{where.removesuffix('class_path')}init_args.{e}") from e
        raise


_ARG_NAMED = re.compile(r"([A-Za-z_]\w*)=")  # a message that begins with an argument's name and value


def build_slot(cfg: DictConfig, key: str, **injected: Any) -> Any:
    """The object the config's ``key`` (one of `SLOTS`) names, or None where the key is null."""
    spec = OmegaConf.select(cfg, key)
    return None if spec is None else instantiate(spec, SLOTS[key], f"{key}.class_path", **injected)
