"""`prompt-tuning`: train, eval, demo.

    prompt-tuning train method=coop dataset=eurosat protocol=fewshot protocol.shots=4 seed=2
    prompt-tuning eval outputs/eurosat/coop/vit_b16/fewshot/shots_4/seed_2
    prompt-tuning demo

User mistakes end in one message naming the culprit (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from prompt_tuning.apps.logs import log_to_stderr
from prompt_tuning.core.errors import HelpFormatter, UserError


def _group_help() -> str:
    """The key=value help, with the config groups' choices read from configs/."""
    from prompt_tuning.config.compose import group_options

    try:
        choices = {g: ", ".join(group_options(g)) for g in ("method", "model", "dataset", "protocol")}
    except UserError:  # no configs/ folder: the command itself will say so
        choices = {g: "(configs/ not found)" for g in ("method", "model", "dataset", "protocol")}
    return f"""arguments are key=value:
  group=NAME       choose configs/<group>/NAME.yaml:
                     method:   {choices['method']}
                     model:    {choices['model']} (or an open_clip architecture .json)
                     dataset:  {choices['dataset']} (or a dataset folder)
                     protocol: {choices['protocol']}
  a.b=VALUE        override any key, e.g. protocol.shots=4 optim.lr=0.01 seed=2
                   method.context.init_args.n_ctx=4 (all keys: configs/defaults.yaml)"""


def _parser() -> argparse.ArgumentParser:
    from prompt_tuning import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # before or after the command
                        help="show tracebacks for user errors too")
    p = argparse.ArgumentParser(prog="prompt-tuning", description="Prompt learning on frozen CLIP models.",
                                parents=[common], formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"prompt-tuning {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=HelpFormatter, **kw)

    t = command("train", "train and test one run, write result.json", epilog=_group_help())
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config groups and key overrides (below)")
    t.add_argument("--print-config", action="store_true",
                   help="print the composed config, with the source of every recipe value, and exit")

    e = command("eval", "test a trained run (its checkpoint) again, optionally on other data",
                epilog=_group_help())
    e.add_argument("run", help="a run folder (holding config.yaml and checkpoints/last.ckpt)")
    e.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the run's config, e.g. dataset=...")
    e.add_argument("--checkpoint", help="checkpoint file (default: RUN/checkpoints/last.ckpt)")
    e.add_argument("--out", help="the JSON file of the result (default: RUN/eval/<checkpoint>[-<overrides>].json)")

    x = command("export", "write a run's learned classifier to a .safetensors file usable without this package")
    x.add_argument("run", help="a run folder (holding config.yaml and checkpoints/last.ckpt)")
    x.add_argument("--out", required=True, help="the .safetensors file to write")
    x.add_argument("--classes", help="a file of class names, one per line (default: the run's own classes)")
    x.add_argument("--checkpoint", help="checkpoint file (default: RUN/checkpoints/last.ckpt)")

    ds = command("datasets", "list, check or prepare benchmark datasets")
    dsub = ds.add_subparsers(dest="action", required=True)
    lst = dsub.add_parser("list", help="the dataset configs, their folders, and which are present",
                          formatter_class=HelpFormatter)
    lst.add_argument("--root", help="the data root holding the dataset folders (default: data.root)")
    c = dsub.add_parser("check", help="validate a dataset folder: counts, missing/unreadable images, classes",
                        formatter_class=HelpFormatter)
    c.add_argument("name", help="a configs/dataset name, or a dataset folder")
    c.add_argument("--root", help="the data root holding the dataset folders (default: data.root)")
    c.add_argument("--no-decode", action="store_true", help="skip decoding every image (faster)")
    pr = dsub.add_parser("prepare", help="download with torchvision and write a split file (or print manual steps)",
                         formatter_class=HelpFormatter)
    pr.add_argument("name", help="a configs/dataset name")
    pr.add_argument("--root", required=True, help="the data root to create the dataset folder in")
    pr.add_argument("--seed", type=int, help="seed of the per-class train/val/test split (default: 1); for shapes, "
                                             "of the generated images (default: 0, the demo's)")

    sub.add_parser("bench", help="time our path against the reference recipe (prompt-tuning bench --help)",
                   add_help=False)
    sub.add_parser("sweep", help="run the missing runs of an experiment grid (prompt-tuning sweep --help)",
                   add_help=False)
    tb = command("table", "mean/std over seeds per method and dataset, with published numbers")
    tb.add_argument("dir", help="a folder of runs (a sweep's output)")
    tb.add_argument("--format", default="md", choices=["md", "csv", "latex"], help="output format")
    tb.add_argument("--layout", choices=["wide", "long"],
                    help="wide: methods x datasets, as papers print them (default for md, latex); long: a row per "
                         "method, shots and dataset with std and seed count (default for csv)")
    tb.add_argument("--experiment", help="experiment file with the grid and published numbers "
                                         "(default: DIR/experiment.yaml, written by sweep)")
    pl_ = command("plot", "accuracy-vs-shots curves and base/novel/HM bars")
    pl_.add_argument("dir", help="a folder of runs (a sweep's output)")
    pl_.add_argument("--out", help="folder for the figures (default: DIR/plots)")
    pl_.add_argument("--format", default="png", choices=["png", "pdf", "svg"], help="figure file format")
    pl_.add_argument("--dpi", type=int, default=150, help="resolution of PNG figures")
    pl_.add_argument("--width", help="column (3.3 in), page (6.9 in) or inches (default: page for curves of "
                                     "several datasets, else column)")
    pl_.add_argument("--caption", action="store_true", help="draw the caption in the figure (it is always "
                                                            "written to a .txt beside it)")
    pl_.add_argument("--experiment", help="experiment file with display names "
                                          "(default: DIR/experiment.yaml, written by sweep)")

    d = command("demo", "offline demo: generated shapes, tiny random CLIP, zero-shot vs CoOp")
    d.add_argument("--workdir", help="keep the generated data and outputs here (default: a temporary folder)")
    d.add_argument("--shots", type=int, default=16, help="training images per class")
    d.add_argument("--epochs", type=int, default=40, help="training epochs of CoOp")
    d.add_argument("--seed", type=int, default=1, help="seed of the runs")
    return p


def _train(args) -> None:
    from prompt_tuning.config.compose import annotated_yaml, compose_annotated

    composed = compose_annotated(args.overrides)  # a mistake in the config is said before torch is imported
    cfg = composed.cfg
    if args.print_config:
        print(annotated_yaml(cfg, composed.sources), end="")
        return
    from prompt_tuning.runs.folder import RunFolder
    from prompt_tuning.runs.runner import Interrupted, train
    from prompt_tuning.runs.trainer import rank

    try:
        result = train(cfg, composed.sources)
    except Interrupted as e:
        again = " ".join(shlex.quote(a) for a in args.overrides if not a.startswith("resume="))
        if not RunFolder(cfg.output_dir).last_checkpoint.is_file():  # stopped in its first epoch
            raise KeyboardInterrupt(f"interrupted at epoch {e.epoch}/{e.max_epochs}, before its first checkpoint; "
                                    f"run it again with: prompt-tuning train {again}") from None
        raise KeyboardInterrupt(f"interrupted at epoch {e.epoch}/{e.max_epochs}; continue with: "
                                f"prompt-tuning train {again} resume=true") from None
    if rank() > 0:  # a further process of a multi-device run: rank 0 reports
        return
    print(json.dumps(result["metrics"], indent=2))
    print(f"wrote {Path(cfg.output_dir) / 'result.json'}")


def _eval(args) -> None:
    """Test a run's checkpoint; the metrics go to stdout (JSON) and, with what produced them, to a JSON file."""
    import time

    from prompt_tuning.runs.folder import RunFolder

    folder = RunFolder(args.run)
    cfg = folder.config(args.overrides)
    checkpoint = Path(args.checkpoint) if args.checkpoint else folder.last_checkpoint
    out = Path(args.out) if args.out else folder.eval_file(checkpoint, args.overrides)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give the .json file to write")
    from prompt_tuning.config.hashing import run_hash
    from prompt_tuning.core.files import write_json
    from prompt_tuning.runs.runner import evaluate_checkpoint, versions

    start = time.time()
    metrics = evaluate_checkpoint(cfg, checkpoint)
    print(json.dumps(metrics, indent=2))
    record = {"run": str(folder.path), "checkpoint": str(checkpoint) if checkpoint.is_file() else None,
              "overrides": list(args.overrides), "trained_config_hash": folder.saved_hash(),
              "config_hash": run_hash(cfg), "method": cfg.method.name, "dataset": cfg.dataset.name,
              "protocol": cfg.protocol.name, "shots": cfg.protocol.shots, "seed": cfg.seed, "metrics": metrics,
              "wall_time_s": round(time.time() - start, 2), "time": time.time(), "versions": versions()}
    try:
        write_json(out, record)
    except UserError as e:  # a run folder one may read but not write (a colleague's)
        raise UserError(f"{e}; the metrics are above: choose where to keep them with --out FILE") from e
    print(f"wrote {out}", file=sys.stderr)  # stdout holds only the metrics' JSON


def _export(args) -> None:
    from prompt_tuning.apps.export import export_head

    head = export_head(args.run, args.out, args.classes, args.checkpoint)
    kind = ("class weights" if head.text_features is not None else
            "learned tensors (conditional or stochastic prompts: they need prompt-tuning to classify)")
    print(f"wrote {args.out}: {len(head.classnames)} classes, {kind}, model {head.model} "
          f"({head.pretrained or 'random weights'})")


def _datasets(args) -> int:
    from prompt_tuning.config.compose import dataset_section, group_options

    if args.action == "list":
        from prompt_tuning.data.check import count_classes

        for name in group_options("dataset"):
            section = dataset_section(name, args.root)
            root = section.init_args.get("root", "")
            state = "present" if root and Path(root).is_dir() else "missing"
            n = section.n_classes or (count_classes(section) if state == "present" else None)  # config, or folder
            print(f"{name:16s} {n or '?':>5} classes  {state:8s} {root}")
        return 0
    if args.action == "prepare":
        from prompt_tuning.data.prepare import prepare

        prepare(args.name, args.root, seed=args.seed)
        return 0
    from prompt_tuning.data.check import check_dataset

    section = dataset_section(args.name, args.root)
    report = check_dataset(section, section.n_classes, decode=not args.no_decode)
    print(report.format())
    return 1 if report.problems else 0


def _experiment_results(args, log=print) -> tuple[dict | None, list[dict], list | None]:
    """The experiment of a results folder (``--experiment``, or the copy a sweep keeps there), the results that
    count (its grid's runs of its configuration; every one without an experiment), and its composed runs. The
    results that do not count are said on stderr."""
    from prompt_tuning.config.experiment import composed_runs, grid_hashes, load_experiment, swept_experiment
    from prompt_tuning.reporting.results import collect

    exp_path = Path(args.experiment) if args.experiment else swept_experiment(args.dir)
    exp = load_experiment(exp_path) if exp_path is not None and exp_path.is_file() else None
    cfgs = composed_runs(exp) if exp else None
    ignored: list = []
    results = collect(args.dir, grid_hashes(exp, cfgs) if cfgs is not None else None, ignored)
    if ignored:
        print(f"ignored {len(ignored)} result.json not counted in this experiment:", file=sys.stderr)
        for path, why in ignored[:10]:
            print(f"  {path}: {why}", file=sys.stderr)
        if len(ignored) > 10:
            print(f"  and {len(ignored) - 10} more", file=sys.stderr)
    return exp, results, cfgs


def _table(args) -> None:
    from prompt_tuning.config.experiment import expected_runs
    from prompt_tuning.reporting.results import aggregate, format_table
    from prompt_tuning.reporting.tables import wide_table

    exp, results, cfgs = _experiment_results(args)
    if not results and exp is None:
        raise UserError(f"no result.json under {args.dir}")
    table = aggregate(results, expected_runs(exp, cfgs) if exp else None)
    seeds = len(exp["grid"].get("seed", [1])) if exp else None
    published = exp.get("published") if exp else None
    if (args.layout or ("long" if args.format == "csv" else "wide")) == "long":
        print(format_table(table, args.format, published, seeds))
    else:
        print(wide_table(table, args.format, published, seeds, exp.get("display") if exp else None))


def _plot(args) -> None:
    from prompt_tuning.config.experiment import expected_runs
    from prompt_tuning.reporting.plot import plot

    exp, results, cfgs = _experiment_results(args)
    expected = expected_runs(exp, cfgs) if exp else None
    exp = exp or {}
    for path in plot(args.dir, args.out, args.format, args.dpi, exp.get("display"), exp.get("published"),
                     results=results, expected=expected, width=args.width, caption=args.caption):
        print(f"wrote {path} (caption: {path.with_suffix('.txt').name})")


def _demo(args) -> None:
    if "matplotlib" not in sys.modules and "MPLCONFIGDIR" not in os.environ:
        # Lightning's imports load matplotlib, which would write its font cache to ~/.cache: the demo leaves
        # nothing there, so that cache lives in a temporary folder for this process
        import atexit
        import shutil
        import tempfile

        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="prompt-tuning-demo-mpl-")
        atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], True)
    from prompt_tuning.apps.demo import format_table, run_demo

    print("prompt-tuning demo: generated shapes dataset, tiny CLIP with RANDOM weights (shows the pipeline, "
          "not CLIP's accuracy)")
    results = run_demo(args.workdir, shots=args.shots, epochs=args.epochs, seed=args.seed)
    print()
    print(format_table(results))


OWN_PARSERS = {"bench": "prompt_tuning.apps.bench", "sweep": "prompt_tuning.apps.sweep"}  # with their own options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    log_to_stderr()
    rest = [a for a in argv if a != "--debug"]  # --debug goes anywhere: before or after the command
    if rest[:1] and rest[0] in OWN_PARSERS:  # e.g. prompt-tuning sweep --help
        import importlib

        debug = "--debug" in argv
        run = lambda: importlib.import_module(OWN_PARSERS[rest[0]]).main(rest[1:])  # noqa: E731
    else:
        args = _parser().parse_args(argv)
        debug = getattr(args, "debug", False)
        commands = {"train": _train, "eval": _eval, "demo": _demo, "datasets": _datasets, "table": _table,
                    "plot": _plot, "export": _export}
        run = lambda: commands[args.command](args) or 0  # noqa: E731
    try:
        return run()
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `prompt-tuning ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
