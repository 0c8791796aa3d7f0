"""`prompt-tuning sweep experiments/X.yaml`: expand a grid of runs and run what is missing.

The experiment file format is `prompt_tuning.config.experiment`'s.

A run whose ``result.json`` carries the same config hash is skipped, so a killed sweep resumes where it stopped
(a run that had begun continues from its last checkpoint); a run another process is training (locked) is left
to it. ``--launcher local --jobs N`` runs N runs at a time, ``--launcher slurm`` submits them as a SLURM job array
(`prompt_tuning.apps.launchers`); ``--status`` shows each run: done, running, failed (with its error) or missing.
"""

from __future__ import annotations

import functools
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from prompt_tuning.apps.grid import compose_run, run_one, state_of, status
from prompt_tuning.apps.launchers import Local, Slurm
from prompt_tuning.config.compose import Composed, dataset_section
from prompt_tuning.config.experiment import expand, load_experiment, swept_copy, with_overrides
from prompt_tuning.core.errors import HelpFormatter, UserError
from prompt_tuning.core.files import write_atomic
from prompt_tuning.core.locks import Busy
from prompt_tuning.runs.folder import RunFolder


def refuse_shared_folders(runs: list) -> None:
    """Two runs of a grid that would write into one folder (a grid key the run path does not show) are refused
    before anything runs: the second would find the first's result and report it as its own."""
    seen: dict = {}
    for run in runs:
        other = seen.setdefault(run.output_dir.resolve(), run)
        if other is not run:
            raise UserError(f"runs {other.describe()} and {run.describe()} both write to {run.output_dir}: put the "
                            "grid key that tells them apart into output_dir (the experiment's args), or sweep them "
                            "into separate outputs")


def recipe_note(composed: Composed) -> str:
    """The recipe values of a run that differ from the method's defaults, e.g. ``optim.max_epochs=50``."""
    def shown(v):
        return f'"{v}"' if isinstance(v, str) and (" " in v or not v) else str(v)

    return " ".join(f"{k}={shown(v)}" for k, (v, _) in sorted(composed.recipe_values.items()))


PER_RUN = 24  # a dry run lists each run up to this many runs (more: grouped by state, reason and recipe)


def per_run_lines(runs: list, states: list[str], composed: list, problems: dict) -> list[str]:
    """A dry run's line per run: its state, grid values and folder, its recipe values, why it is blocked."""
    lines = []
    for i, (run, state, c) in enumerate(zip(runs, states, composed)):
        note = recipe_note(c)
        lines.append(f"  [{state:7s}] {run.describe()}  ->  {run.output_dir}"
                     + (f"\n            recipe: {note}" if note else "")
                     + (f"\n            blocked: {problems[i]}" if state == "blocked" else ""))
    return lines


def grouped_lines(runs: list, states: list[str], composed: list, problems: dict) -> list[str]:
    """A dry run of many runs in a few lines: the runs per state (and per reason for the blocked ones), and
    the recipe values per method; ``--verbose`` lists each run."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, state in enumerate(states):
        groups.setdefault((state, problems.get(i, "") if state == "blocked" else ""), []).append(i)
    lines = []
    for (state, why), members in groups.items():
        example = runs[members[0]]
        lines.append(f"  [{state:7s}] {len(members)} run{'s' * (len(members) > 1)}" + (f": {why}" if why else "")
                     + f"  (e.g. {example.describe()}  ->  {example.output_dir})")
    recipes: dict[str, dict[str, int]] = {}
    for c in composed:
        note = recipe_note(c)
        if note:
            notes = recipes.setdefault(str(c.cfg.method.name), {})
            notes[note] = notes.get(note, 0) + 1
    for method, notes in recipes.items():
        for note, n in notes.items():
            lines.append(f"  recipe {method} ({n} run{'s' * (n > 1)}): {note}")
    lines.append(f"  ({len(runs)} runs in all; --verbose lists each one)")
    return lines


def sweep(path: str | Path, only: list[str] = (), dry_run: bool = False, progress: bool = False,
          log=print, overwrite: bool = False, overrides: list[str] = (), launcher=None,
          verbose: bool = False) -> dict[str, int]:
    """Run the missing runs of an experiment; returns counts of done / ran / failed / running / blocked.

    ``overrides`` (``key=value``, as for ``train``) apply to every run, after the experiment's own arguments.
    ``launcher``: None runs them here one after another; a `prompt_tuning.apps.launchers.Local` or ``Slurm`` runs
    them in processes of their own or as a SLURM job array.
    """
    exp = load_experiment(path)
    exp = with_overrides(exp, overrides)
    runs = expand(exp, only)
    composed = [compose_run(run, progress, overwrite) for run in runs]  # a mistake is said before torch is imported
    from prompt_tuning.runs.runner import Interrupted
    cfgs = [c.cfg for c in composed]
    refuse_shared_folders(runs)
    if launcher is None and any(int(cfg.trainer.devices) > 1 for cfg in cfgs):
        launcher = Local(jobs=1)  # a multi-device run starts its own processes: each run in a process of its own
    states = [status(cfg) for cfg in cfgs]  # a failed run is to do again
    checks = survey(cfgs)
    problems = checks.problems
    states = ["blocked" if s == "todo" and problems.get(i) else s for i, s in enumerate(states)]
    counts = {"total": len(runs), "done": states.count("done"), "running": states.count("running"),
              "changed": states.count("changed"), "blocked": states.count("blocked"), "ran": 0, "failed": 0}
    todo = [i for i, s in enumerate(states) if s == "todo"]
    log(f"experiment {exp['name']}: {len(runs)} runs, {counts['done']} done, {len(todo)} to run, "
        f"{counts['blocked']} blocked, {counts['running']} running elsewhere"
        + (f", {counts['changed']} finished under another configuration (kept; --overwrite replaces them)"
           if counts["changed"] else ""))
    if dry_run:
        for line in checks.lines():
            log(line)
        lines = per_run_lines if verbose or len(runs) <= PER_RUN else grouped_lines
        for line in lines(runs, states, composed, problems):
            log(line)
        log(estimate(cfgs, states))
        return counts
    text = Path(path).read_text()
    if overrides:  # table and plot must see the runs as they were composed: a copy of its own, beside the plain one
        text = f"# written by `prompt-tuning sweep {path} {' '.join(overrides)}`\n" + OmegaConf.to_yaml(exp)
    write_atomic(Path(exp["output"]) / swept_copy(exp), text)
    started = time.time()
    failures = [(runs[i].describe(), problems[i]) for i, s in enumerate(states) if s == "blocked"]
    if launcher is not None:
        todo_runs = [runs[i] for i in todo]
        if todo_runs:
            sweep_id = f"s-{uuid.uuid4().hex[:12]}"  # recorded by the runs this sweep trains
            passed = [*overrides, *(["overwrite=true"] if overwrite else []),  # each task composes its run again
                      f"runtime.sweep_id={sweep_id}"]
            outcome = launcher.run(str(Path(path).resolve()), passed, todo_runs, Path(exp["output"]), log,
                                   exp["name"])
            if outcome is None:  # submitted, not waited for
                counts["submitted"] = len(todo_runs)
                return counts
            for run in todo_runs:
                error = outcome[run.index]
                state = status(run.cfg)
                if error is None and state == "done" and (RunFolder(run.output_dir).result() or {}).get(
                        "sweep_id") == sweep_id:
                    counts["ran"] += 1
                elif error is None and state == "done":  # another process finished it meanwhile
                    counts["done"] += 1
                elif error is None:
                    counts["running"] += 1
                else:
                    counts["failed"] += 1
                    failures.append((run.describe(), error))
        todo = []
    for n, i in enumerate(todo, 1):
        run, cfg = runs[i], cfgs[i]
        if status(cfg) != "todo":  # another sweep got there meanwhile
            continue
        eta = (time.time() - started) / (n - 1) * (len(todo) - n + 1) if n > 1 else None
        log(f"[{n}/{len(todo)}] {run.describe()}" + (f"  (ETA {_duration(eta)})" if eta is not None else ""))
        try:
            result = run_one(cfg, composed[i].sources)
            counts["ran"] += 1
            log(f"    {', '.join(f'{k}={v:.2f}' for k, v in result['metrics'].items() if 'macro' not in k)}")
        except Interrupted as e:
            again = " ".join([str(path), *overrides, *(f"--only {o}" for o in only)])
            raise KeyboardInterrupt(f"{e} of {run.describe()}; continue with: prompt-tuning sweep {again} "
                                    "(finished runs are skipped, begun ones continue from their last epoch)") from None
        except Busy:  # another process took the run meanwhile
            counts["running"] += 1
        except UserError as e:
            counts["failed"] += 1
            failures.append((run.describe(), str(e)))
            log(f"    FAILED: {e}")
    log(f"done: {counts['ran']} ran, {counts['done']} were done, {counts['failed']} failed, "
        f"{counts['blocked']} blocked, {counts['running']} running elsewhere"
        + (f", {counts['changed']} kept under another configuration" if counts["changed"] else "")
        + f"; results under {exp['output']} ({_duration(time.time() - started)})")
    if failures:
        log(f"not run ({len(failures)}):")
        for describe, why in failures:
            log(f"  {describe}: {why}")
    return counts


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.1 h``."""
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def report(path: str | Path, only: list[str] = (), overrides: list[str] = (), log=print) -> dict[str, int]:
    """``--status``: each run's state (done, running with its lock holder, failed with its error, missing;
    changed for a folder holding another configuration's result), then the counts."""
    exp = load_experiment(path)
    exp = with_overrides(exp, overrides)
    runs = expand(exp, only)
    counts = dict.fromkeys(("done", "running", "failed", "missing", "changed"), 0)
    lines = []
    for run in runs:
        state, detail = state_of(compose_run(run).cfg)
        state = "missing" if state == "todo" else state
        counts[state] += 1
        lines.append(f"  [{state:7s}] {run.describe()}" + (f"  ({detail})" if detail else "")
                     + ("" if state == "done" else f"  ->  {run.output_dir}"))
    log(f"experiment {exp['name']}: {len(runs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    for line in lines:
        log(line)
    return counts


def _dataset_problem(section) -> str | None:
    """Why a dataset section cannot be read (its folder or split file is missing), or None."""
    args = section.get("init_args") or {}
    root = args.get("root")
    if not root:
        return None
    if not Path(root).is_dir():
        return f"dataset folder {root} is missing"
    split = args.get("split_file")
    if split and not (Path(root) / split).is_file():
        return f"split file {Path(root) / split} is missing"
    return None


@functools.cache
def _section(name: str, data_root: str):
    return dataset_section(name, data_root)


def _datasets_of(cfg) -> dict[str, object]:
    """The dataset sections a run reads: its own and its transfer targets."""
    sections = {cfg.dataset.name: cfg.dataset}
    for other in cfg.protocol.eval_datasets:
        sections.setdefault(other, _section(str(other), str(cfg.data.root)))
    return sections


def _weights(cfg) -> str:
    from prompt_tuning.backbone import weights_status

    return weights_status(cfg.model.name, cfg.model.pretrained, cfg.model.arch, cfg.model.cache_dir)


@dataclass
class Survey:
    """What a sweep's runs need from this machine, checked once per dataset folder and per model.

    Attributes:
        datasets: dataset name -> ``ready (ROOT)`` or what is missing.
        models: ``MODEL (TAG)`` -> where its weights come from (`weights_status`).
        problems: run index -> why that run cannot run here.
    """

    datasets: dict[str, str]
    models: dict[str, str]
    problems: dict[int, str]

    def lines(self) -> list[str]:
        """Per dataset: present or what is missing; per model: where its weights come from."""
        meaning = {"random": "random weights, nothing to load", "file": "a local file", "cached": "cached on disk",
                   "download": "not cached: will be downloaded (needs internet)"}
        return (["datasets:"] + [f"  {n:16s} {state}" for n, state in self.datasets.items()]
                + ["models:"] + [f"  {m}: {meaning.get(s, s)}" for m, s in self.models.items()])


def survey(cfgs: list) -> Survey:
    """Check each dataset folder, split file and model of ``cfgs`` once; say which runs cannot run here."""
    datasets: dict[tuple, str | None] = {}  # (name, root) -> problem
    models: dict[str, str] = {}
    problems = {}
    for i, cfg in enumerate(cfgs):
        why = []
        for name, section in _datasets_of(cfg).items():
            key = (name, str((section.get("init_args") or {}).get("root")))
            if key not in datasets:
                datasets[key] = _dataset_problem(section)
            if datasets[key]:
                why.append(datasets[key])
        label = f"{cfg.model.name} ({cfg.model.pretrained or 'random weights'})"
        if label not in models:
            models[label] = _weights(cfg)
        if models[label].startswith("missing"):
            why.append(f"weights {models[label]}")
        if why:
            problems[i] = "; ".join(why[:2]) + (f"; and {len(why) - 2} more" if len(why) > 2 else "")
    shown: dict[str, str] = {}
    for (name, root), problem in datasets.items():
        shown.setdefault(name, problem or f"ready ({root})")
    return Survey(shown, models, problems)


def estimate(cfgs: list, states: list[str]) -> str:
    """The time the runs to do should take, from the wall times of the finished ones."""
    times = [r["wall_time_s"] for cfg, s in zip(cfgs, states) if s == "done"
             for r in [RunFolder(cfg.output_dir).result()] if r and "wall_time_s" in r]
    todo = states.count("todo")
    if not todo:
        return "estimated time: nothing to run"
    if not times:
        return f"estimated time: unknown ({todo} runs to do; no finished run to estimate from)"
    mean = sum(times) / len(times)
    return (f"estimated time: {_duration(mean * todo)} for {todo} runs "
            f"(mean {_duration(mean)} over {len(times)} finished runs)")


def parser():
    import argparse

    p = argparse.ArgumentParser(prog="prompt-tuning sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter,
                                epilog="--debug anywhere on the command line shows tracebacks of user errors")
    p.add_argument("experiment", help="an experiment file (experiments/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="applied to every run, as for `train` (e.g. model=tiny data.root=/data)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs, check datasets and weights, count done / to run / blocked, estimate time")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="run a slice of the grid (repeatable)")
    p.add_argument("--progress", action="store_true", help="progress bars inside each run")
    p.add_argument("--verbose", action="store_true",
                   help=f"--dry-run: a line per run (by default, grids of more than {PER_RUN} runs are grouped)")
    p.add_argument("--overwrite", action="store_true",
                   help="rerun runs whose folder holds a finished result of another configuration")
    p.add_argument("--status", action="store_true",
                   help="show each run: done, running (lock holder, host, job), failed (its error) or missing")
    g = p.add_argument_group("launchers")
    g.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: on this machine; slurm: one SLURM job array (submitit), a task per run")
    g.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="local: runs at a time, in worker processes (one GPU each where there are GPUs); 1: one "
                        "after another in the sweep's own process")
    g.add_argument("--partition", help="slurm: the partition")
    g.add_argument("--gpus-per-run", type=int, default=1, metavar="N", help="slurm: GPUs of each task (0: none)")
    g.add_argument("--cpus-per-run", type=int, default=8, metavar="N", help="slurm: CPUs of each task")
    g.add_argument("--time", default="4:00:00", help="slurm: time limit of each task ([D-]HH:MM:SS or minutes)")
    g.add_argument("--max-parallel", type=int, default=20, metavar="N", help="slurm: tasks running at a time")
    g.add_argument("--no-wait", action="store_true",
                   help="slurm: return once submitted (follow with --status) instead of waiting for the tasks")
    return p


def make_launcher(args):
    """The launcher of the command line's options (None: runs one after another in this process)."""
    if args.launcher == "slurm":
        for name in ("cpus_per_run", "max_parallel"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if args.gpus_per_run < 0:
            raise UserError("--gpus-per-run must be >= 0")
        return Slurm(args.partition, args.gpus_per_run, args.cpus_per_run, args.time, args.max_parallel,
                     wait=not args.no_wait)
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give 1 or more")
    return Local(jobs=args.jobs) if args.jobs > 1 else None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    say = lambda m: print(m, flush=True)  # noqa: E731
    if args.status:
        counts = report(args.experiment, args.only, args.overrides, log=say)
        return 1 if counts["failed"] else 0
    counts = sweep(args.experiment, args.only, args.dry_run, args.progress, log=say, overwrite=args.overwrite,
                   overrides=args.overrides, launcher=None if args.dry_run else make_launcher(args),
                   verbose=args.verbose)
    return 1 if counts["failed"] or (counts["blocked"] and not args.dry_run) else 0


if __name__ == "__main__":
    sys.exit(main())
