"""Precision of a run: under bf16 autocast a method's scores stay fp32, so a run's accuracy is that of an fp32 run
(bf16 rounds logits of about 100 to steps of 0.5-1, which ties the top scores of many images)."""

import json

from prompt_tuning.apps.cli import main
from tests.conftest import TINY_ARCH


def test_tip_adapter_under_bf16_autocast_gives_the_fp32_accuracy(shapes_dir, tmp_path):
    accs = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        assert main(["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=tip_adapter",
                     "protocol.shots=4", "runtime.progress=false", f"trainer.precision={precision}",
                     "method.context.init_args.search_scale=[50,200]", f"output_dir={out}"]) == 0
        accs[precision] = json.loads((out / "result.json").read_text())["metrics"]
    assert accs["bf16-mixed"] == accs["32-true"]
