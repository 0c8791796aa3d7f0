"""Result trees for reporting tests: result records, and an experiment's grid written as a sweep writes it."""

import json
import textwrap

from prompt_tuning.config.experiment import composed_runs, grid_hashes, load_experiment


def result(method, dataset, seed, shots=16, **metrics):
    return {"method": method, "dataset": dataset, "seed": seed, "shots": shots, "protocol": "x", "tags": {},
            "trainable": method != "zeroshot", "metrics": metrics}


def experiment(tmp_path, grid: str, args: str = "[model=tiny]") -> tuple:
    """An experiment file with ``grid`` (YAML flow text) and its output under ``tmp_path/out``: (file, exp, cfgs)."""
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(textwrap.dedent(f"""\
        name: grid
        output: {tmp_path / 'out'}
        args: {args}
        grid: {grid}
        """))
    exp = load_experiment(exp_file)
    return exp_file, exp, composed_runs(exp)


def write_runs(tmp_path, exp, cfgs, metrics, skip=lambda cfg: False) -> None:
    """A result.json for each run of the grid (``metrics(cfg)``), in its folder with its run hash, as a sweep
    writes them; runs with ``skip(cfg)`` are left out."""
    for (folder, run_hash), cfg in zip(grid_hashes(exp, cfgs).items(), cfgs):
        if skip(cfg):
            continue
        r = result(str(cfg.method.name), str(cfg.dataset.name), int(cfg.seed), int(cfg.protocol.shots),
                   **metrics(cfg))
        r["config_hash"] = run_hash
        (tmp_path / "out" / folder).mkdir(parents=True)
        (tmp_path / "out" / folder / "result.json").write_text(json.dumps(r))
