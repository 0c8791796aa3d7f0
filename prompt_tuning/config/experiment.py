"""Experiment files: one per paper table, a grid of runs (methods x datasets x shots x seeds x any config key), the
arguments every run shares, and the published numbers the table is compared with::

    name: base2novel
    output: outputs/base2novel          # runs go to <output>/<dataset>/<method>/<model>/<protocol>[-<tag>]/...
    args: [protocol=base2novel]         # applied to every run (any train argument)
    grid:                               # one run per combination; keys are groups, `seed` or any config key
      method: [coop, cocoop]
      dataset: [eurosat, dtd]
      seed: [1, 2, 3]
    published: {...}                    # numbers to compare with, read by `prompt-tuning table`
    display: {coop: CoOp, "coop[n_ctx=4]": CoOp-4}   # names in plots (default: the papers' spelling)

Grid values other than method, dataset, seed and ``protocol.shots`` are recorded as ``tags`` in each result (they
distinguish ablation variants in tables). They, and the overrides a sweep is given on its command line (kept in
the experiment as ``overrides:``), tag the run's folder (`prompt_tuning.config.identity`): ``.../shots_<K>/seed_<S>``
under ``<protocol>-n_ctx4-lr0.01``, so a sweep with overrides never shares a folder with the plain experiment.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prompt_tuning.config.compose import GROUPS, compose, load_yaml
from prompt_tuning.config.identity import override_tag, pairs, variant
from prompt_tuning.core.errors import UserError

PATH_KEYS = ("dataset", "method", "protocol.shots", "seed")  # keys the standard run path already encodes
SWEPT = "experiment.yaml"  # the copy of its experiment a sweep keeps in its output folder, for table and plot
ENTRIES = ("name", "description", "output", "args", "overrides", "grid", "published", "display")


@dataclass
class Run:
    choice: dict[str, object]  # grid key -> value
    args: list[str]  # the full train arguments
    output_dir: Path
    index: int = 0  # position in the experiment's full grid (a launcher's task recomposes run `index`)
    cfg: object = None  # the composed config, once composed

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.choice.items())


def load_experiment(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"experiment file {path} does not exist")
    try:
        exp = OmegaConf.to_container(load_yaml(path, "experiment"), resolve=True)
    except OmegaConfBaseException as e:  # an unknown resolver, a key that refers to itself
        raise UserError(f"experiment {path}: {' '.join(str(e).split())[:300]}") from e
    for key in ("name", "grid"):
        if key not in exp:
            raise UserError(f"experiment {path} needs a '{key}' entry")
    if not isinstance(exp["grid"], dict) or not isinstance(exp.get("args", []), list):
        raise UserError(f"experiment {path}: 'grid' must map keys to lists of values and 'args' must be a list")
    unknown = set(exp) - set(ENTRIES)
    if unknown:
        raise UserError(f"experiment {path}: unknown entries {sorted(unknown)}; valid: {', '.join(ENTRIES)}")
    if not isinstance(exp.get("overrides", []), list):
        raise UserError(f"experiment {path}: 'overrides' must be a list of key=value")
    exp.setdefault("output", f"outputs/{exp['name']}")
    exp.setdefault("args", [])
    exp.setdefault("overrides", [])
    return exp


def with_overrides(exp: dict, overrides: list[str]) -> dict:
    """The experiment with a sweep's command-line ``key=value`` overrides, applied to every run after its own
    arguments; they tag the run folders (a sweep with ``optim.lr=0.01`` never reuses the plain runs' folders)."""
    return {**exp, "overrides": [*exp.get("overrides", []), *overrides]}


def swept_copy(exp: dict) -> str:
    """The file name of the copy a sweep keeps in its output folder: ``experiment.yaml``, or, for a sweep with
    overrides, ``experiment-<tag>.yaml`` (``model=rn50 optim.lr=0.01`` -> ``experiment-modelrn50-lr0.01.yaml``)."""
    tag = override_tag(pairs(exp.get("overrides", [])))
    return f"experiment-{tag}.yaml" if tag else SWEPT


def swept_experiment(folder: str | Path) -> Path | None:
    """The copy of its experiment a sweep left in ``folder``: the plain one, or the one copy of a sweep with
    overrides; several override copies and no plain one is an error naming them (``--experiment`` picks one)."""
    folder = Path(folder)
    if (folder / SWEPT).is_file():
        return folder / SWEPT
    copies = sorted(folder.glob("experiment-*.yaml"))
    if len(copies) > 1:
        raise UserError(f"{folder} holds the runs of {len(copies)} sweeps with overrides "
                        f"({', '.join(c.name for c in copies)}): choose one with --experiment {copies[0]}")
    return copies[0] if copies else None


def expand(exp: dict, only: list[str] = ()) -> list[Run]:
    """Every combination of the grid (in file order), filtered by ``only`` (``key=value`` strings; ``key=a,b``
    or a repeated key keeps any of the values)."""
    grid = exp["grid"]
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"grid key {key!r} must map to a non-empty list, got {values!r}")
        if any(isinstance(v, dict | list) for v in values):
            raise UserError(f"grid key {key!r}: its values must be single values (a name, a number), got {values!r}")
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise UserError(f"grid key {key!r} lists {', '.join(repeated)} more than once: each value is one run")
    filters = {}
    for f in only:
        key, sep, value = f.partition("=")
        if not sep or key not in grid:
            raise UserError(f"--only {f!r}: give key=value with key one of {', '.join(grid)}")
        known = {str(v) for v in grid[key]}  # a comma list is alternatives, unless a value holds the comma
        filters.setdefault(key, set()).update({value} if value in known else value.split(","))
    if filters:
        for key, wanted in filters.items():
            unknown = sorted(wanted - {str(v) for v in grid[key]})
            if unknown:
                raise UserError(f"--only {key}={','.join(unknown)} matches nothing: the grid's {key} values are "
                                f"{', '.join(map(str, grid[key]))}")
    runs = []
    overrides = exp.get("overrides", [])
    for index, combo in enumerate(itertools.product(*grid.values())):
        choice = dict(zip(grid, combo))
        if any(str(choice[k]) not in v for k, v in filters.items()):
            continue
        tags = {k.rpartition(".")[2]: v for k, v in choice.items() if k not in PATH_KEYS and k not in
                ("protocol", "model")}
        tagging = [(k, str(v)) for k, v in choice.items() if k not in GROUPS] + [
            (k, v) for k, v in pairs(overrides) if k not in GROUPS]
        args = [*exp["args"], *overrides, *(f"{k}={v}" for k, v in choice.items()),
                *(f"tags.{k}={v}" for k, v in tags.items()), f"runtime.experiment={exp['name']}",
                f"runtime.variant={variant(tagging) or repr('')}"]
        out = (f"{exp['output']}/${{dataset.name}}/${{method.name}}/${{runtime.model}}/${{protocol.name}}"
               "${runtime.variant}/shots_${protocol.shots}/seed_${seed}")
        runs.append(Run(choice, [*args, f"output_dir={out}"], Path(), index))
    return runs


def composed_runs(exp: dict) -> list | None:
    """The composed config of every run of the grid, or None when one cannot be composed here (e.g. a dataset
    folder that is gone: tables then show what they find)."""
    try:
        return [compose(run.args) for run in expand(exp)]
    except UserError:
        return None


def grid_hashes(exp: dict, cfgs: list) -> dict[str, str]:
    """Each run of the grid's folder, relative to the experiment's output, with its run hash: the results a
    table and a plot of the experiment count (any other ``result.json`` there is not the experiment's)."""
    from prompt_tuning.config.hashing import run_hash

    root = Path(exp["output"])
    return {str(Path(cfg.output_dir).relative_to(root)) if Path(cfg.output_dir).is_relative_to(root)
            else str(cfg.output_dir): run_hash(cfg) for cfg in cfgs}


def expected_runs(exp: dict, cfgs: list | None = None) -> dict | None:
    """``{(method, shots): [datasets]}`` a plain method x dataset x shots grid should produce, read off each
    run's composed config (so a recipe that sets the shots, as KgCoOp's cross-dataset 4, is expected there);
    None for grids with other keys, whose method labels carry tags."""
    if set(exp["grid"]) - {"method", "dataset", "seed", "protocol.shots"}:
        return None
    cfgs = composed_runs(exp) if cfgs is None else cfgs
    if cfgs is None:
        return None
    expected: dict = {}
    for cfg in cfgs:
        datasets = expected.setdefault((str(cfg.method.name), int(cfg.protocol.shots)), [])
        if cfg.dataset.name not in datasets:
            datasets.append(str(cfg.dataset.name))
    return expected
