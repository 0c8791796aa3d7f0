"""The multimodal prompt methods: IVLP, deep language prompting, VPT-deep, MaPLe and PromptSRC (its self-regulating
objective and Gaussian prompt aggregation): gradients reaching every prompt layer and nothing else, each method's
layout and coupling, where their image features come from (never the cache for a prompted tower), their runs from
the CLI, and prompt depths beyond the model refused before a run writes anything."""

import json

import pytest
import torch
import torch.nn.functional as F

from prompt_tuning.apps.cli import main
from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.core.errors import UserError
from prompt_tuning.methods.base import Inputs, Task
from prompt_tuning.methods.contexts.ivlp import IVLP
from prompt_tuning.methods.contexts.maple import MaPLe
from prompt_tuning.methods.prompt_hooks import VisualPrompts
from prompt_tuning.runs.module import PromptTuner
from tests.backbone.test_prompt_hooks import reference_image
from tests.conftest import TINY_ARCH
from tests.helpers import ARCH4, one_line, random_images

TASK = Task(("red circle", "great_crested_grebe", "dog", "blue square"), "a photo of a {}.")
# prompt depths that fit the 2-block tiny CLIP of TINY_ARCH
ARG = "method.context.init_args."
DEPTH2 = {
    "deep_language": [f"{ARG}depth_text=2"],
    "maple": [f"{ARG}depth=2"],
    "promptsrc": [f"{ARG}depth_text=2", f"{ARG}depth_vision=2"],
}



# ------------------------------------------------------------------------------------------- the methods
def _loss(module, images, labels):
    out = module(module.image_features({"image": images}))
    return F.cross_entropy(out.logits[0], labels)


@pytest.mark.parametrize("make", [
    lambda c: IVLP(c, TASK, n_ctx_text=2, n_ctx_vision=3, depth_text=3, depth_vision=4),
    lambda c: IVLP(c, TASK, n_ctx_text=4, n_ctx_vision=0, depth_text=4, depth_vision=0, ctx_init=None),
    lambda c: IVLP(c, TASK, n_ctx_text=0, n_ctx_vision=8, depth_text=0, depth_vision=3),
    lambda c: MaPLe(c, TASK, n_ctx=2, depth=3),
], ids=["ivlp", "deep_language", "vpt_deep", "maple"])
def test_gradient_reaches_every_prompt_layer_and_nothing_else(clip4, make):
    torch.manual_seed(0)
    ctx = make(clip4)
    module = PromptTuner(clip4, ctx, TASK)
    _loss(module, random_images(4), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in ctx.named_parameters():
        grad = p.grad
        assert grad is not None, name
        per_layer = grad.flatten(1).abs().sum(1) if name in ("deep_text", "visual") else grad.abs().sum().view(1)
        assert (per_layer > 0).all(), f"{name}: a prompt layer gets no gradient"
    assert not any(p.requires_grad for p in clip4.model.parameters())
    assert set(module.state_dict()) == {f"method.{n}" for n, _ in ctx.named_parameters()}  # checkpoints


def test_ivlp_layout_text_from_a_photo_of_a_and_image_tower_use(clip4):
    ctx = IVLP(clip4, TASK, n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=2)
    words = clip4.token_embeddings(clip4.tokenize("a photo of a"))[0, 1:3]
    assert torch.equal(ctx.ctx, words)  # the first 2 tokens; "of a" stay fixed words after them
    assert ctx.capabilities.image_tower
    language_only = IVLP(clip4, TASK, n_ctx_text=4, n_ctx_vision=0, depth_text=2, depth_vision=0)
    assert not language_only.capabilities.image_tower and language_only.image_hook() is None


def test_vpt_text_side_is_frozen_clip_of_its_template(clip4):
    ctx = IVLP(clip4, TASK, n_ctx_text=0, n_ctx_vision=4, depth_text=0, depth_vision=2,
               text_template="a photo of a {}.")
    text, _ = ctx.text_features(clip4)
    assert torch.allclose(text[0], clip4.encode_text(TASK.prompts()), atol=1e-6)


def test_maple_visual_prompts_are_the_projected_text_prompts(clip4):
    torch.manual_seed(0)
    ctx = MaPLe(clip4, TASK, n_ctx=2, depth=3)
    visual = ctx.image_hook().prompts
    assert len(visual) == 3 and visual[0].shape == (2, clip4.vision_width)
    assert torch.allclose(visual[0], ctx.ctx @ ctx.proj.weight.T + ctx.proj.bias)
    for j in (1, 2):
        lin = ctx.deep_proj[j - 1]
        assert torch.allclose(visual[j], ctx.deep_text[j - 1] @ lin.weight.T + lin.bias)
    # the deep projections start as copies of one layer; proj is another
    assert torch.equal(ctx.deep_proj[0].weight, ctx.deep_proj[1].weight)
    assert not torch.equal(ctx.proj.weight, ctx.deep_proj[0].weight)
    images = random_images(2)
    prompts = reference_image(clip4, images, visual)
    assert torch.allclose(clip4.encode_images(images, normalize=False, hook=VisualPrompts(visual)), prompts,
                          atol=1e-6)
    assert len(MaPLe(clip4, TASK, n_ctx=2, depth=1).image_hook().prompts) == 1  # input prompts even at depth 1


def test_a_visual_prompt_method_never_reads_image_features_from_the_cache(clip4, shapes_dir, tmp_path):
    from prompt_tuning.config.compose import compose
    from prompt_tuning.runs.build import build

    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=maple", "protocol.shots=2",
                   "data.cache_views=2", "runtime.progress=false", *DEPTH2["maple"]])
    setup = build(cfg)
    assert "image" in setup.datamodule.train_set[0]
    assert "image" in setup.eval_dataset(setup.eval_sets["all"][1][:2])[0]
    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=deep_language", "protocol.shots=2",
                   "data.cache_views=2", "runtime.progress=false", *DEPTH2["deep_language"]])
    assert "features" in build(cfg).datamodule.train_set[0]  # plain image tower: cached views serve it


def test_export_refuses_a_method_that_prompts_the_image_tower(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=maple", "protocol.shots=1",
                 "optim.max_epochs=1", "runtime.progress=false", f"output_dir={out}", *DEPTH2["maple"]]) == 0
    capsys.readouterr()
    assert main(["export", str(out), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "prompts the image tower" in capsys.readouterr().err


def test_a_prompt_depth_beyond_the_model_fails_before_the_run_writes_anything(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=maple", "runtime.progress=false",
                 f"output_dir={out}"]) == 2
    line = one_line(capsys)  # the full key of the argument, as the user sets it
    assert line == f"error: method.context.init_args.depth=9: the text transformer of {TINY_ARCH.stem} has 2 blocks"
    assert not out.exists()
    assert main(["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=promptsrc", "runtime.progress=false",
                 "method.context.init_args.depth_text=2", f"output_dir={out}"]) == 2
    assert "error: method.context.init_args.depth_vision=9: the image transformer of" in one_line(capsys)
    with pytest.raises(UserError, match="depth_vision=5: the image transformer of tiny4 has 4 blocks"):
        IVLP(FrozenCLIP.build("tiny4", None, arch=ARCH4), TASK, depth_text=2, depth_vision=5)


# ------------------------------------------------------------------------------------------------ PromptSRC
def test_self_regulating_objective_is_the_authors_loss(clip4):
    from prompt_tuning.methods.base import Outputs
    from prompt_tuning.methods.objectives import SelfRegulating

    templates = ["a photo of a {}.", "a sketch of the {}.", "itap of a {}."]
    obj = SelfRegulating(clip4, TASK, templates=templates)
    names = [n.replace("_", " ") for n in TASK.classnames]
    fixed = torch.stack([clip4.encode_text([t.replace("{}", n) for t in templates], normalize=False).mean(0)
                         for n in names])  # mean of the unnormalised features over templates
    fixed_n = fixed / fixed.norm(dim=-1, keepdim=True)
    assert torch.allclose(obj.frozen_text, fixed_n, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(1, 4, 32, generator=g), dim=-1)
    f, f0 = (F.normalize(torch.randn(5, 32, generator=g), dim=-1) for _ in range(2))
    logits = 20 * torch.randn(1, 5, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0])
    terms = obj(Outputs(logits, f, t, None), labels, Inputs(frozen_image_features=f0))
    zs = clip4.logit_scale * f0 @ fixed_n.T
    p0, logp = zs.softmax(1), logits[0].log_softmax(1)
    expected = (F.cross_entropy(logits[0], labels) + 25 * (t[0] - fixed_n).abs().mean() + 10 * (f - f0).abs().mean()
                + (p0 * (p0.log() - logp)).sum() / 20)
    assert torch.allclose(sum(terms.values()), expected, atol=1e-5)


def test_gaussian_weights_are_the_authors():
    from prompt_tuning.methods.averaging import gaussian_weights

    w = gaussian_weights(20, 15, 1)
    assert sum(w) == pytest.approx(1.0)
    assert [round(x, 4) for x in w[11:18]] == [0.0044, 0.054, 0.242, 0.3989, 0.242, 0.054, 0.0044]
    wide = gaussian_weights(20, 6, 10)
    assert wide[0] == pytest.approx(0.055, abs=1e-3) and wide[-1] == pytest.approx(0.024, abs=1e-3)


def test_gpa_checkpoint_holds_the_weighted_average_of_the_epochs(shapes_dir, tmp_path):
    import pytorch_lightning as pl

    from prompt_tuning.config.compose import compose
    from prompt_tuning.methods.averaging import gaussian_weights
    from prompt_tuning.runs.build import build
    from prompt_tuning.runs.checkpoints import load_checkpoint
    from prompt_tuning.runs.folder import RunFolder
    from prompt_tuning.runs.trainer import make_trainer

    epochs = []

    class Record(pl.Callback):  # runs before the module's epoch-end hook, which aggregates
        def on_train_epoch_end(self, trainer, module):
            epochs.append({n: p.detach().clone() for n, p in module.method.named_parameters()})

    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=promptsrc", "protocol.shots=2",
                   "optim.max_epochs=4", "optim.lr=0.05", "method.averaging.init_args.mean=3",
                   "method.averaging.init_args.std=1.5", "runtime.progress=false", f"output_dir={tmp_path}",
                   *DEPTH2["promptsrc"]])
    setup = build(cfg)
    folder = RunFolder(tmp_path)
    trainer = make_trainer(cfg, folder, 4)
    trainer.callbacks.insert(0, Record())
    trainer.fit(setup.module, datamodule=setup.datamodule)
    w = gaussian_weights(4, 3, 1.5)
    saved = load_checkpoint(folder.last_checkpoint)["state_dict"]
    names = [n for n, _ in setup.module.method.named_parameters()]
    assert set(saved) == {f"method.{n}" for n in names} | {f"averaging.sum_{i}" for i in range(len(names))}
    for name, p in setup.module.method.named_parameters():
        average = sum(wi * e[name] for wi, e in zip(w, epochs))
        assert torch.allclose(p, average, atol=1e-6), name
        assert torch.equal(saved[f"method.{name}"], p.detach())
        assert not torch.allclose(epochs[-1][name], average, atol=1e-6)  # the average is not the last epoch


def test_promptsrc_frozen_image_features_are_the_unprompted_towers(clip4):
    from prompt_tuning.methods.objectives import SelfRegulating

    ctx = IVLP(clip4, TASK, n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=2)
    module = PromptTuner(clip4, ctx, TASK, SelfRegulating(clip4, TASK, templates=["a photo of a {}."]))
    images = random_images(4)
    prompted = module.image_features({"image": images})
    frozen = module.frozen_image_features({"image": images}, prompted)
    assert torch.equal(frozen, F.normalize(clip4.model.encode_image(images), dim=-1))
    assert not torch.allclose(frozen, F.normalize(prompted, dim=-1))


def test_promptsrc_trains_and_its_checkpoint_evaluates_to_the_same_numbers(shapes_dir, tmp_path, capsys):
    out = tmp_path / "psrc"
    assert main(["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=promptsrc", "protocol.shots=2",
                 "optim.max_epochs=3", "method.averaging.init_args.mean=2", "runtime.progress=false",
                 f"output_dir={out}", *DEPTH2["promptsrc"]]) == 0
    result = json.loads((out / "result.json").read_text())
    logged = (out / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert all(k in logged for k in ("train/ce", "train/text_l1", "train/image_l1", "train/logit_kl"))
    capsys.readouterr()
    assert main(["eval", str(out), "runtime.progress=false"]) == 0
    assert json.loads(capsys.readouterr().out)["acc"] == result["metrics"]["acc"]


def test_promptsrc_frozen_features_of_cached_views_come_from_the_cache(shapes_dir, monkeypatch):
    from prompt_tuning.config.compose import compose
    from prompt_tuning.data.datamodule import ViewDataset
    from prompt_tuning.runs.build import build

    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=promptsrc", "protocol.shots=2",
                   "data.cache_views=3", "runtime.progress=false", *DEPTH2["promptsrc"]])
    setup = build(cfg)
    train = setup.datamodule.train_set
    assert isinstance(train, ViewDataset) and train.frozen.shape[:2] == (3, len(train))
    item = train.view(2, 5)  # the regenerated image of view 3 and the cache's features of that very image
    direct = setup.clip.encode_images(item["image"][None], normalize=False)[0]
    assert torch.allclose(item["frozen"], direct, atol=1e-5)
    calls = []
    original = FrozenCLIP.encode_images

    def counting(self, images, normalize=True, hook=None):
        calls.append(hook is None)
        return original(self, images, normalize, hook)

    monkeypatch.setattr(FrozenCLIP, "encode_images", counting)
    batch = next(iter(setup.datamodule.train_dataloader()))
    setup.module.training_outputs(batch)
    assert calls == [False]  # the prompted pass only: the frozen features came with the batch


def test_promptsrc_targets_of_a_class_set_are_computed_only_when_training_needs_them(clip4, monkeypatch):
    from prompt_tuning.methods.objectives import SelfRegulating

    calls = []
    original = FrozenCLIP.encode_text
    monkeypatch.setattr(FrozenCLIP, "encode_text", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    obj = SelfRegulating(clip4, TASK, templates=["a photo of a {}.", "art of the {}."])
    obj.set_task(clip4, Task(("x", "y")))  # e.g. an evaluation subset: nothing computed
    assert calls == []
    assert obj.frozen_text.shape == (2, 32) and len(calls) == 2  # one text pass per template, once
    assert obj.frozen_text is obj.frozen_text  # kept
    assert len(calls) == 2
