"""The package's layers read bottom-up, checked statically over every module with the ast module: a module
imports only modules of its own folder or of lower layers, never a private name of another module, and the
import graph has no circle."""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "prompt_tuning"
# layer of each folder: a module may import its own folder and strictly lower layers
LAYERS = {"core": 0, "config": 1, "backbone": 1, "methods": 2, "data": 2, "runs": 3, "reporting": 4, "apps": 5}


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of a package folder: dotted name -> file."""
    mods = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def imports(name: str, mods: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module of the package, imported name or None) of every import statement of module ``name``
    (relative imports resolved; ``TYPE_CHECKING`` imports count too)."""
    path, found = mods[name], []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            found += [(f"{base}.{a.name}", None) if f"{base}.{a.name}" in mods else (base, a.name) for a in node.names]
    resolved = []
    root = name.split(".")[0]
    for target, imported in found:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        if target.split(".")[0] == root and target != name:
            resolved.append((target, imported))
    return resolved


def folder(name: str) -> str | None:
    """The layer folder of a module (``prompt_tuning.runs.build`` -> ``runs``); None for the package root."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(mods: dict[str, Path]) -> list[str]:
    """Every import that goes up or sideways between layers, or takes a private name of another module."""
    out = []
    for name in sorted(mods):
        here = folder(name)
        for target, imported in imports(name, mods):
            there = folder(target)
            if there is None:  # the package root holds only the version
                continue
            if here is None or (there != here and LAYERS[there] >= LAYERS[here]):
                out.append(f"{name} ({here}) imports {target} ({there})")
            if imported and imported.startswith("_") and not imported.startswith("__"):
                out.append(f"{name} imports the private name {target}.{imported}")
    return out


def circle(mods: dict[str, Path]) -> list[str] | None:
    """One import circle of the package, or None."""
    graph = {m: {t for t, _ in imports(m, mods)} for m in mods}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [m, t] if t in path else [m, t]
            if t not in state and (found := visit(t, path + [m])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [])):
            return found
    return None


MODULES = modules()


def test_every_module_sits_in_a_layer():
    loose = [m for m in MODULES if m != "prompt_tuning" and folder(m) not in LAYERS]
    assert not loose, f"modules outside the layer folders: {loose}"


def test_imports_go_down_the_layers_and_never_take_a_private_name():
    assert violations(MODULES) == []


def test_the_import_graph_has_no_circle():
    assert circle(MODULES) is None


def test_the_checks_catch_an_upward_import_a_private_name_and_a_circle(tmp_path):
    """The same checks on a small package that breaks each rule once."""
    pkg = tmp_path / "prompt_tuning"
    for sub in ("core", "runs"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from prompt_tuning.runs.b import run\n")  # up a layer
    (pkg / "runs" / "b.py").write_text("from prompt_tuning.core.a import _hidden\nrun = 1\n")  # private, circle
    mods = modules(pkg)
    found = violations(mods)
    assert any("core.a (core) imports prompt_tuning.runs.b (runs)" in v for v in found)
    assert any("private name prompt_tuning.core.a._hidden" in v for v in found)
    assert set(circle(mods) or []) >= {"prompt_tuning.core.a", "prompt_tuning.runs.b"}
