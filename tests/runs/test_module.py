"""The training module (PromptTuner): scaled-cosine logits, training and gradients that reach only the method's
learned tensors while CLIP stays frozen, the Dassl schedule, class features computed once per evaluation (once in
total for zero-shot), accuracy, the checkpoint round trip, class-set changes and the automatic precision."""

import copy
import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from prompt_tuning.methods.base import Task
from prompt_tuning.methods.contexts.coop import CoOp
from prompt_tuning.runs.module import PromptTuner, sgd
from prompt_tuning.runs.schedules import WarmupCosine, warmup_cosine
from tests.conftest import build_tiny
from tests.helpers import image_loader


def _trainer(epochs=2):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True)


def _manual_accuracy(module, clip, loader):
    """Accuracy of scoring every batch on its own (class features recomputed per batch)."""
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            correct += (module(clip.encode_images(batch["image"])).logits[0].argmax(-1) == batch["label"]).sum().item()
            total += len(batch["label"])
    return correct / total


def test_logits_are_scaled_cosine_similarities(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    images = torch.randn(5, 3, 32, 32)
    img = clip.encode_images(images)
    logits = module(img).logits
    prompts = module.method()
    txt = F.normalize(clip.encode_prompts(prompts.embeddings[0], prompts.eot_index), dim=-1)
    assert logits.shape == (1, 5, len(task.classnames))
    assert torch.allclose(logits[0], clip.logit_scale * img @ txt.T, atol=1e-5)


def test_training_changes_only_the_method_and_every_clip_weight_stays_identical(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task, optimizer=sgd(lr=0.5),
                         schedule=WarmupCosine(warmup_epochs=0), max_epochs=3)
    clip_before = copy.deepcopy(clip.model.state_dict())
    ctx_before = module.method.ctx.detach().clone()
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["method.ctx"]

    _trainer(epochs=3).fit(module, train_dataloaders=image_loader())

    assert not torch.equal(module.method.ctx.detach(), ctx_before)
    clip_after = clip.model.state_dict()
    assert clip_before.keys() == clip_after.keys()
    assert all(torch.equal(clip_before[k], clip_after[k]) for k in clip_before)
    assert all(p.grad is None for p in clip.model.parameters())
    assert not clip.model.training


def test_one_step_gradient_reaches_only_the_method(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    batch = next(iter(image_loader()))
    module.training_step(batch, 0).backward()  # automatic optimisation: the step returns the loss
    assert module.method.ctx.grad is not None and module.method.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.model.parameters())


def _dassl_lrs(lr, warmup_lr, warmup_epochs, max_epochs):
    """Dassl's ConstantWarmupScheduler around CosineAnnealingLR, replayed with torch's own scheduler."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
    lrs = []
    for epoch in range(max_epochs):
        if epoch < warmup_epochs:
            lrs.append(warmup_lr)
        else:
            lrs.append(successor.get_last_lr()[0])
            opt.step()
            successor.step()
    return lrs


def test_schedule_matches_dassl_constant_warmup_then_cosine():
    lr, warmup_lr, epochs = 0.002, 1e-5, 50
    ours = [lr * warmup_cosine(e, epochs, 1, lr, warmup_lr) for e in range(epochs)]
    ref = _dassl_lrs(lr, warmup_lr, 1, epochs)
    assert ours[0] == warmup_lr and ours[1] == lr
    assert max(abs(a - b) for a, b in zip(ours, ref)) < 1e-12
    assert math.isclose(ours[-1], lr * 0.5 * (1 + math.cos(math.pi * 48 / 50)))  # cosine step 48 of 50


def test_lightning_applies_the_schedule_per_epoch(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task, optimizer=sgd(lr=0.002),
                         schedule=WarmupCosine(warmup_epochs=1), max_epochs=4)
    seen = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    trainer.fit(module, train_dataloaders=image_loader())
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(seen, _dassl_lrs(0.002, 1e-5, 1, 4)))


def test_evaluation_computes_class_text_features_once(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    calls = []
    module.method.register_forward_hook(lambda *a: calls.append(1))
    loader = image_loader(n=40, batch=8)
    out = _trainer().test(module, dataloaders=loader, verbose=False)[0]  # 5 test batches
    assert len(calls) == 1
    # the reused class features give the accuracy of scoring each batch on its own
    assert math.isclose(out["test/acc"], 100 * _manual_accuracy(module, clip, loader), abs_tol=1e-4)  # percent


def test_test_accuracy_equals_a_manual_count(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    loader = image_loader(n=40, batch=16)
    out = _trainer().test(module, dataloaders=loader, verbose=False)[0]
    correct = 0
    with torch.no_grad():
        for batch in loader:
            correct += (module(clip.encode_images(batch["image"])).logits[0].argmax(-1) == batch["label"]).sum().item()
    assert math.isclose(out["test/acc"], 100 * correct / 40, abs_tol=1e-4)  # percent, as in result.json


def test_checkpoint_round_trip_holds_only_the_method_and_restores_logits(tmp_path, task):
    clip = build_tiny()
    torch.manual_seed(1)
    trained = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    with torch.no_grad():
        trained.method.ctx.add_(torch.randn_like(trained.method.ctx))
    torch.save(trained.state_dict(), tmp_path / "ckpt.pt")
    assert list(trained.state_dict()) == ["method.ctx"]

    torch.manual_seed(2)
    fresh = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt"), strict=True)
    img = clip.encode_images(torch.randn(3, 3, 32, 32))
    assert torch.equal(fresh(img).logits, trained(img).logits)


def test_set_task_rebinds_method_and_metrics(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    module.set_task(Task(("cat", "dog")))
    assert module(clip.encode_images(torch.randn(2, 3, 32, 32))).logits.shape == (1, 2, 2)
    assert module.acc.num_classes == 2


def test_zero_shot_class_features_are_computed_once_in_total(task):
    from prompt_tuning.methods.contexts.zeroshot import ZeroShot

    clip = build_tiny()
    module = PromptTuner(clip, ZeroShot(clip, task), task)
    calls = []
    module.method.register_forward_hook(lambda *a: calls.append(1))
    for _ in range(3):
        _trainer().test(module, dataloaders=image_loader(n=16, batch=8), verbose=False)
    assert len(calls) == 1
    module.set_task(Task(("cat", "dog")))  # another class set needs its own features
    _trainer().test(module, dataloaders=image_loader(n=16, n_cls=2, batch=8), verbose=False)
    assert len(calls) == 2


def test_precision_auto_is_fp32_on_cpu_and_bf16_on_a_gpu(monkeypatch):
    from prompt_tuning.runs.trainer import resolve_precision

    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "auto") == "16-mixed"  # an explicit choice is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"
