"""Logits, scores, loss terms and metrics are fp32 whatever the autocast (bf16 rounds logits of about 100 to
steps of 0.5-1, which ties the top scores of many images)."""

import json

import pytest
import torch

from prompt_tuning.cli import main
from prompt_tuning.config import compose
from prompt_tuning.runner import build, fit
from tests.conftest import TINY_ARCH, tiny_method_args
from tests.test_config import METHODS


@pytest.mark.parametrize("method", METHODS)
def test_every_method_scores_and_trains_in_fp32_under_bf16_autocast(shapes_dir, tmp_path, method):
    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", f"method={method}", "protocol.shots=2",
                   "optim.max_epochs=1", "data.batch_size=4", "runtime.progress=false",
                   f"output_dir={tmp_path}", *tiny_method_args(method)])
    setup = build(cfg)
    fit(setup)
    module = setup.module
    batch = next(iter(torch.utils.data.DataLoader(setup.datamodule.train_set, batch_size=4)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module.train()
        outputs = module.training_outputs(batch)
        terms = module.loss_terms(outputs, batch["label"])
        module.eval()
        module._start_eval()
        with torch.no_grad():
            logits = module._eval_logits(module.image_features(batch))
            probs = module.predict_proba(logits)
    full = (torch.float32, torch.float64)  # the linear probe scores in scikit-learn's float64
    assert outputs.logits.dtype in full and logits.dtype in full and probs.dtype in full
    assert outputs.image_features.dtype == torch.float32 and outputs.text_features.dtype == torch.float32
    assert all(t.dtype in full for t in terms.values()), {k: t.dtype for k, t in terms.items()}


def test_tip_adapter_under_bf16_autocast_gives_the_fp32_accuracy(shapes_dir, tmp_path):
    accs = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        assert main(["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=tip_adapter",
                     "protocol.shots=4", "runtime.progress=false", f"trainer.precision={precision}",
                     "method.context.init_args.search_scale=[50,200]", f"output_dir={out}"]) == 0
        accs[precision] = json.loads((out / "result.json").read_text())["metrics"]
    assert accs["bf16-mixed"] == accs["32-true"]
