"""Plots of results: one few-shot curve per method, and `plot` writing the figures of a folder of runs."""

import json

from prompt_tuning.reporting.plot import curves_figure, plot
from prompt_tuning.reporting.results import aggregate


def _result(method, dataset, seed, shots=16, **metrics):
    return {"method": method, "dataset": dataset, "seed": seed, "shots": shots, "protocol": "x",
            "metrics": metrics, "tags": {}}


def test_plot_has_one_line_per_method(tmp_path):
    results = [_result(m, "a", s, shots=k, acc=50.0 + k + s) for m in ("coop", "cocoop", "zeroshot")
               for k in (1, 2, 4) for s in (1, 2)]
    fig = curves_figure(aggregate(results))
    assert len(fig.axes[0].get_lines()) == 3
    for i, r in enumerate(results):
        out = tmp_path / "runs" / str(i)
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps(r))
    assert [p.name for p in plot(tmp_path / "runs")] == ["fewshot_curves.png"]
