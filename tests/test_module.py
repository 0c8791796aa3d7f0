"""PromptTuner: logits, gradients only on the context, frozen CLIP unchanged, schedule, once-per-eval text
features, checkpoint round trip."""

import copy
import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from prompt_tuning.contexts.base import Task
from prompt_tuning.contexts.coop import CoOp
from prompt_tuning.module import PromptTuner, warmup_cosine
from tests.conftest import build_tiny


class _Dicts(TensorDataset):
    def __getitem__(self, i):
        image, label = super().__getitem__(i)
        return {"image": image, "label": label}


def _loader(n=24, n_cls=4, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.arange(n) % n_cls
    return DataLoader(_Dicts(images, labels), batch_size=batch)


def _trainer(epochs=2):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True)


def test_logits_are_scaled_cosine_similarities(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    images = torch.randn(5, 3, 32, 32)
    img = clip.encode_images(images)
    logits = module(img).logits
    prompts = module.context()
    txt = F.normalize(clip.encode_prompts(prompts.embeddings[0], prompts.eot_index), dim=-1)
    assert logits.shape == (1, 5, len(task.classnames))
    assert torch.allclose(logits[0], clip.logit_scale * img @ txt.T, atol=1e-5)


def test_training_changes_only_the_context_and_every_clip_weight_stays_identical(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task, lr=0.5, max_epochs=3, warmup_epochs=0)
    clip_before = copy.deepcopy(clip.model.state_dict())
    ctx_before = module.context.ctx.detach().clone()
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["context.ctx"]

    _trainer(epochs=3).fit(module, train_dataloaders=_loader())

    assert not torch.equal(module.context.ctx.detach(), ctx_before)
    clip_after = clip.model.state_dict()
    assert clip_before.keys() == clip_after.keys()
    assert all(torch.equal(clip_before[k], clip_after[k]) for k in clip_before)
    assert all(p.grad is None for p in clip.model.parameters())
    assert not clip.model.training


def test_one_step_gradient_reaches_only_the_context(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    batch = next(iter(_loader()))
    module.training_step(batch, 0).backward()  # automatic optimisation: the step returns the loss
    assert module.context.ctx.grad is not None and module.context.ctx.grad.abs().sum() > 0
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
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task, lr=0.002, max_epochs=4, warmup_epochs=1)
    seen = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    trainer.fit(module, train_dataloaders=_loader())
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(seen, _dassl_lrs(0.002, 1e-5, 1, 4)))


def test_evaluation_computes_class_text_features_once(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    calls = []
    module.context.register_forward_hook(lambda *a: calls.append(1))
    out = _trainer().test(module, dataloaders=_loader(n=40, batch=8), verbose=False)[0]  # 5 test batches
    assert len(calls) == 1
    assert 0.0 <= out["test/acc"] <= 1.0


def test_test_accuracy_equals_a_manual_count(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    loader = _loader(n=40, batch=16)
    out = _trainer().test(module, dataloaders=loader, verbose=False)[0]
    correct = 0
    with torch.no_grad():
        for batch in loader:
            correct += (module(clip.encode_images(batch["image"])).logits[0].argmax(-1) == batch["label"]).sum().item()
    assert math.isclose(out["test/acc"], correct / 40, abs_tol=1e-6)


def test_checkpoint_round_trip_holds_only_the_context_and_restores_logits(tmp_path, task):
    clip = build_tiny()
    torch.manual_seed(1)
    trained = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    with torch.no_grad():
        trained.context.ctx.add_(torch.randn_like(trained.context.ctx))
    torch.save(trained.state_dict(), tmp_path / "ckpt.pt")
    assert list(trained.state_dict()) == ["context.ctx"]

    torch.manual_seed(2)
    fresh = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt"), strict=True)
    img = clip.encode_images(torch.randn(3, 3, 32, 32))
    assert torch.equal(fresh(img).logits, trained(img).logits)


def test_set_task_rebinds_context_and_metrics(task):
    clip = build_tiny()
    module = PromptTuner(clip, CoOp(clip, task, n_ctx=4), task)
    module.set_task(Task(("cat", "dog")))
    assert module(clip.encode_images(torch.randn(2, 3, 32, 32))).logits.shape == (1, 2, 2)
    assert module.acc.num_classes == 2


def test_zero_shot_class_features_are_computed_once_in_total(task):
    from prompt_tuning.contexts.zeroshot import ZeroShot

    clip = build_tiny()
    module = PromptTuner(clip, ZeroShot(clip, task), task)
    calls = []
    module.context.register_forward_hook(lambda *a: calls.append(1))
    for _ in range(3):
        _trainer().test(module, dataloaders=_loader(n=16, batch=8), verbose=False)
    assert len(calls) == 1
    module.set_task(Task(("cat", "dog")))  # another class set needs its own features
    _trainer().test(module, dataloaders=_loader(n=16, n_cls=2, batch=8), verbose=False)
    assert len(calls) == 2


def test_precision_auto_is_fp32_on_cpu_and_bf16_on_a_gpu(monkeypatch):
    from prompt_tuning.runner import resolve_precision

    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "auto") == "16-mixed"  # an explicit choice is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"
