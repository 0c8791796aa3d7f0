"""Feedback in seconds: a mistake in the config is said before torch, open_clip or Lightning is imported; a dry
run of a large grid says each reason once (``--verbose``: each run); durations read in seconds, minutes or hours."""

import json
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning.apps import sweep as sweep_mod
from tests.conftest import REPO, method_configs

HEAVY = ("torch", "open_clip", "pytorch_lightning")
PROBE = textwrap.dedent("""
    import sys
    from prompt_tuning.apps.cli import main
    code = main(sys.argv[1:])
    print(code, sorted(m for m in {heavy!r} if m in sys.modules))
""").format(heavy=HEAVY)


@pytest.fixture
def experiment(tmp_path, shapes_dir):
    exp = tmp_path / "exp.yaml"
    exp.write_text(json.dumps({"name": "e", "output": str(tmp_path / "out"),
                               "args": ["model=tiny", f"dataset={shapes_dir}"],
                               "grid": {"method": ["coop"], "seed": [1, 2]}}))
    return exp


@pytest.mark.parametrize("args, said", [
    (["train", "dataset=eurosat", "optim.lrr=1"], "unknown config key 'optim.lrr'; did you mean 'lr'?"),
    (["train", "dataset=eurosat", "method.context.init_args.nctx=4"],
     "method.context.init_args.nctx: not an argument of prompt_tuning.methods.contexts.coop.CoOp; did you mean"),
    (["train", "dataset=eurosat", "method=copo"], "method='copo': no method/copo.yaml"),
    (["train", "dataset=eurosat", "protocol.shots=abc"], "protocol.shots"),
    (["sweep", "EXP", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["sweep", "EXP", "method.context.init_args.nctx=4"], "method.context.init_args.nctx: not an argument"),
])
def test_a_config_mistake_is_said_before_the_heavy_imports(args, said, experiment):
    args = [str(experiment) if a == "EXP" else a for a in args]
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr[-2000:]
    assert said in proc.stderr and proc.stderr.count("\n") == 1


def test_a_dry_run_of_many_runs_groups_them_by_state_and_reason(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(json.dumps({"name": "big", "output": str(tmp_path / "out"), "args": ["model=tiny"],
                               "grid": {"method": ["coop", "cocoop"], "dataset": ["eurosat", "dtd"],
                                        "protocol.shots": [1, 2, 4], "seed": [1, 2, 3]},
                               }))
    lines: list[str] = []
    cwd = tmp_path / "empty"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as m:
        m.chdir(cwd)
        m.setenv("PT_DATA_ROOT", str(cwd / "data"))
        counts = sweep_mod.sweep(exp, dry_run=True, log=lines.append)
        verbose: list[str] = []
        sweep_mod.sweep(exp, dry_run=True, log=verbose.append, verbose=True)
    assert counts["blocked"] == 36
    blocked = [ln for ln in lines if ln.startswith("  [blocked]")]
    assert len(blocked) == 2  # one line per missing dataset folder, with its count
    assert all(ln.startswith("  [blocked] 18 runs: dataset folder ") for ln in blocked)
    assert any("eurosat is missing" in ln for ln in blocked) and any("dtd is missing" in ln for ln in blocked)
    assert any(ln.startswith("  recipe cocoop (18 runs): data.batch_size=1") for ln in lines)
    assert "  (36 runs in all; --verbose lists each one)" in lines
    assert sum(ln.startswith("  [blocked] method=") for ln in verbose) == 36
    assert len(lines) < 20 < len(verbose)


@pytest.mark.parametrize("seconds, text", [(0.4, "0.4 s"), (42, "42 s"), (150, "2.5 min"), (9000, "2.5 h")])
def test_durations_read_in_their_own_unit(seconds, text):
    assert sweep_mod._duration(seconds) == text


@pytest.mark.parametrize("method", method_configs())
def test_the_early_name_check_reads_the_signature_the_full_check_imports(method):
    import inspect

    from prompt_tuning.config.compose import compose
    from prompt_tuning.config.instantiate import SLOTS, import_class, source_parameters, specs

    cfg = compose([f"method={method}", "dataset=eurosat", "model=tiny"])
    read = 0
    for key, spec in specs(cfg):
        if key in SLOTS:
            early = source_parameters(str(spec.class_path))
            if early is not None:
                read += 1
                assert early == tuple(inspect.signature(import_class(str(spec.class_path))).parameters)
    assert read >= 2  # the method's class and the dataset's are read from their source
