"""Prompts in both towers (issue #13): the deep text and image passes against plain step-by-step loops written
here in the authors' order (MaPLe/IVLP ``clip/model.py``), zero-prompt equivalence, gradients reaching every
prompt layer and nothing else, and the methods (IVLP, deep language prompting, VPT-deep, MaPLe) end to end."""

import json

import pytest
import torch
import torch.nn.functional as F

from prompt_tuning.cli import main
from prompt_tuning.clip import FrozenCLIP
from prompt_tuning.contexts.base import Task
from prompt_tuning.contexts.ivlp import IVLP
from prompt_tuning.contexts.maple import MaPLe
from prompt_tuning.errors import UserError
from prompt_tuning.module import PromptTuner
from tests.conftest import TINY_ARCH, tiny_method_args

# 4 blocks per tower and different widths, so that depths 1-4 and the MaPLe projections are all exercised
ARCH4 = {"embed_dim": 32,
         "vision_cfg": {"image_size": 32, "layers": 4, "width": 48, "patch_size": 8, "head_width": 24},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 4}}
TASK = Task(("red circle", "great_crested_grebe", "dog", "blue square"), "a photo of a {}.")


@pytest.fixture(scope="module")
def clip4() -> FrozenCLIP:
    torch.manual_seed(0)
    return FrozenCLIP.build("tiny4", None, arch=ARCH4)


def _images(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- reference loops
def reference_text(clip, prefix_text, ctx, deep, classnames):
    """The authors' text pass: all 77 positions, the context at 1..n, deep prompts spliced in raw at the input of
    blocks 1..len(deep), the causal mask, EOT pooling (argmax of the token ids), the projection."""
    m = clip.model
    tokens = clip.tokenize([f"{prefix_text} {name.replace('_', ' ')}." for name in classnames])
    x = m.token_embedding(tokens)
    n = ctx.shape[0]
    x = torch.cat([x[:, :1], ctx.expand(len(classnames), -1, -1), x[:, 1 + n:]], dim=1)
    x = x + m.positional_embedding
    for i, block in enumerate(m.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(len(classnames), -1, -1), x[:, 1 + n:]], dim=1)
        x = block(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    return x[torch.arange(len(classnames)), tokens.argmax(dim=-1)] @ m.text_projection


def reference_image(clip, images, prompts):
    """The authors' image pass: patches, [CLS, patches] + positional embedding, prompts appended, ln_pre, the
    last n tokens replaced at the input of blocks 1..J-1, ln_post of the class token, the projection."""
    v = clip.model.visual
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    n = prompts[0].shape[0]
    x = v.ln_pre(torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1))
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i < len(prompts):
            x = torch.cat([x[:, : x.shape[1] - n], prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return v.ln_post(x[:, 0]) @ v.proj


# ----------------------------------------------------------------------------------------- the passes
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_deep_text_pass_equals_the_authors_loop(clip4, depth):
    torch.manual_seed(depth)
    ctx = IVLP(clip4, TASK, n_ctx_text=2, n_ctx_vision=0, depth_text=depth, depth_vision=0)
    ours = clip4.encode_prompts(*_flat(ctx()), deep=list(ctx.deep_text), deep_start=1)
    ref = reference_text(clip4, "a photo of a", ctx.ctx, list(ctx.deep_text), TASK.classnames)
    assert (ours - ref).abs().max().item() <= 1e-6


def _flat(prompts):
    s, c, length, d = prompts.embeddings.shape
    return prompts.embeddings.reshape(s * c, length, d), prompts.eot_index.repeat(s)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_deep_image_pass_equals_the_authors_loop(clip4, depth):
    torch.manual_seed(depth)
    prompts = [torch.randn(3, clip4.vision_width) * 0.5 for _ in range(depth)]
    images = _images()
    ours = clip4.encode_images(images, normalize=False, prompts=prompts)
    assert (ours - reference_image(clip4, images, prompts)).abs().max().item() <= 1e-6


def test_zero_prompts_equal_open_clip_exactly(clip4):
    images = _images(5)
    plain = clip4.model.encode_image(images)
    assert torch.equal(clip4.encode_images(images, normalize=False, prompts=[]), plain)
    empty = [torch.zeros(0, clip4.vision_width)] * 3
    assert torch.equal(clip4.encode_images(images, normalize=False, prompts=empty), plain)
    tokens = clip4.tokenize(TASK.prompts())
    emb, eot = clip4.token_embeddings(tokens), clip4.eot_index(tokens)
    assert torch.equal(clip4.encode_prompts(emb, eot, deep=[]), clip4.encode_prompts(emb, eot))
    assert torch.equal(clip4.encode_prompts(emb, eot), clip4.model.encode_text(tokens))


def test_deep_prompts_deeper_than_the_tower_or_over_the_eot_are_errors(clip4):
    tokens = clip4.tokenize(["a b"])
    emb, eot = clip4.token_embeddings(tokens), clip4.eot_index(tokens)
    with pytest.raises(UserError, match="at most the block count"):
        clip4.encode_prompts(emb, eot, deep=[torch.zeros(1, clip4.width)] * 4)
    with pytest.raises(UserError, match="end-of-text"):
        clip4.encode_prompts(emb, eot, deep=[torch.zeros(3, clip4.width)])
    with pytest.raises(UserError, match="at most the block count"):
        clip4.encode_images(_images(1), prompts=[torch.zeros(1, clip4.vision_width)] * 5)


def test_visual_prompts_on_a_resnet_are_a_clear_error():
    arch = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    clip = FrozenCLIP.build("tiny-rn", None, arch=arch)
    with pytest.raises(UserError, match="visual prompts need a ViT image tower; this model's is ModifiedResNet"):
        clip.encode_images(_images(1), prompts=[torch.zeros(2, 8)])
    with pytest.raises(UserError, match="ViT image tower"):
        MaPLe(clip, TASK, depth=1)


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
    _loss(module, _images(4), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in ctx.named_parameters():
        grad = p.grad
        assert grad is not None, name
        per_layer = grad.flatten(1).abs().sum(1) if name in ("deep_text", "visual") else grad.abs().sum().view(1)
        assert (per_layer > 0).all(), f"{name}: a prompt layer gets no gradient"
    assert not any(p.requires_grad for p in clip4.model.parameters())
    assert set(module.state_dict()) == {f"context.{n}" for n, _ in ctx.named_parameters()}  # checkpoints


def test_ivlp_layout_text_from_a_photo_of_a_and_image_tower_use(clip4):
    ctx = IVLP(clip4, TASK, n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=2)
    words = clip4.token_embeddings(clip4.tokenize("a photo of a"))[0, 1:3]
    assert torch.equal(ctx.ctx, words)  # the first 2 tokens; "of a" stay fixed words after them
    assert not ctx.frozen_image_tower
    language_only = IVLP(clip4, TASK, n_ctx_text=4, n_ctx_vision=0, depth_text=2, depth_vision=0)
    assert language_only.frozen_image_tower and language_only.visual_prompts() is None


def test_vpt_text_side_is_frozen_clip_of_its_template(clip4):
    ctx = IVLP(clip4, TASK, n_ctx_text=0, n_ctx_vision=4, depth_text=0, depth_vision=2,
               text_template="a photo of a {}.")
    text, _ = ctx.text_features(clip4)
    assert torch.allclose(text[0], clip4.encode_text(TASK.prompts()), atol=1e-6)


def test_maple_visual_prompts_are_the_projected_text_prompts(clip4):
    torch.manual_seed(0)
    ctx = MaPLe(clip4, TASK, n_ctx=2, depth=3)
    visual = ctx.visual_prompts()
    assert len(visual) == 3 and visual[0].shape == (2, clip4.vision_width)
    assert torch.allclose(visual[0], ctx.ctx @ ctx.proj.weight.T + ctx.proj.bias)
    for j in (1, 2):
        lin = ctx.deep_proj[j - 1]
        assert torch.allclose(visual[j], ctx.deep_text[j - 1] @ lin.weight.T + lin.bias)
    # the deep projections start as copies of one layer; proj is another
    assert torch.equal(ctx.deep_proj[0].weight, ctx.deep_proj[1].weight)
    assert not torch.equal(ctx.proj.weight, ctx.deep_proj[0].weight)
    images = _images(2)
    prompts = reference_image(clip4, images, visual)
    assert torch.allclose(clip4.encode_images(images, normalize=False, prompts=visual), prompts, atol=1e-6)
    assert len(MaPLe(clip4, TASK, n_ctx=2, depth=1).visual_prompts()) == 1  # input prompts even at depth 1


def test_a_visual_prompt_method_never_reads_image_features_from_the_cache(clip4, shapes_dir, tmp_path):
    from prompt_tuning.config import compose
    from prompt_tuning.runner import build

    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=maple", "protocol.shots=2",
                   "data.cache_views=2", "runtime.progress=false", *tiny_method_args("maple")])
    setup = build(cfg)
    assert "image" in setup.datamodule.train_set[0]
    assert "image" in setup.eval_dataset(setup.eval_sets["all"][1][:2])[0]
    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=deep_language", "protocol.shots=2",
                   "data.cache_views=2", "runtime.progress=false", *tiny_method_args("deep_language")])
    assert "features" in build(cfg).datamodule.train_set[0]  # plain image tower: cached views serve it


@pytest.mark.parametrize("method", ["ivlp", "deep_language", "vpt_deep", "maple"])
def test_each_method_trains_and_evaluates_from_the_cli(shapes_dir, tmp_path, method, capsys):
    out = tmp_path / method
    args = ["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", f"method={method}", "protocol.shots=4",
            "optim.lr=0.05", "optim.max_epochs=3", "runtime.progress=false", f"output_dir={out}",
            *tiny_method_args(method)]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["epochs"] == 3 and 0 <= result["metrics"]["acc"] <= 100
    capsys.readouterr()
    assert main(["eval", str(out), "runtime.progress=false"]) == 0  # the checkpoint gives the same numbers
    assert json.loads(capsys.readouterr().out)["acc"] == result["metrics"]["acc"]


def test_export_refuses_a_method_that_prompts_the_image_tower(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=maple", "protocol.shots=1",
                 "optim.max_epochs=1", "runtime.progress=false", f"output_dir={out}",
                 *tiny_method_args("maple")]) == 0
    capsys.readouterr()
    assert main(["export", str(out), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "prompts the image tower" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ PromptSRC
def test_self_regulating_objective_is_the_authors_loss(clip4):
    from prompt_tuning.contexts.base import Outputs
    from prompt_tuning.objectives import SelfRegulating

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
    terms = obj(Outputs(logits, f, t, None, f0), labels)
    zs = clip4.logit_scale * f0 @ fixed_n.T
    p0, logp = zs.softmax(1), logits[0].log_softmax(1)
    expected = (F.cross_entropy(logits[0], labels) + 25 * (t[0] - fixed_n).abs().mean() + 10 * (f - f0).abs().mean()
                + (p0 * (p0.log() - logp)).sum() / 20)
    assert torch.allclose(sum(terms.values()), expected, atol=1e-5)


def test_gaussian_weights_are_the_authors():
    from prompt_tuning.averaging import gaussian_weights

    w = gaussian_weights(20, 15, 1)
    assert sum(w) == pytest.approx(1.0)
    assert [round(x, 4) for x in w[11:18]] == [0.0044, 0.054, 0.242, 0.3989, 0.242, 0.054, 0.0044]
    wide = gaussian_weights(20, 6, 10)
    assert wide[0] == pytest.approx(0.055, abs=1e-3) and wide[-1] == pytest.approx(0.024, abs=1e-3)


def test_gpa_checkpoint_holds_the_weighted_average_of_the_epochs(shapes_dir, tmp_path):
    import pytorch_lightning as pl

    from prompt_tuning.averaging import gaussian_weights
    from prompt_tuning.config import compose
    from prompt_tuning.runner import CKPT_DIR, LAST_CKPT, build, load_checkpoint, make_trainer

    epochs = []

    class Record(pl.Callback):  # runs before the module's epoch-end hook, which aggregates
        def on_train_epoch_end(self, trainer, module):
            epochs.append({n: p.detach().clone() for n, p in module.context.named_parameters()})

    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=promptsrc", "protocol.shots=2",
                   "optim.max_epochs=4", "optim.lr=0.05", "method.averaging.init_args.mean=3",
                   "method.averaging.init_args.std=1.5", "runtime.progress=false", f"output_dir={tmp_path}",
                   *tiny_method_args("ivlp")])
    setup = build(cfg)
    trainer = make_trainer(cfg, tmp_path, 4)
    trainer.callbacks.insert(0, Record())
    trainer.fit(setup.module, datamodule=setup.datamodule)
    w = gaussian_weights(4, 3, 1.5)
    saved = load_checkpoint(tmp_path / CKPT_DIR / LAST_CKPT)["state_dict"]
    names = [n for n, _ in setup.module.context.named_parameters()]
    assert set(saved) == {f"context.{n}" for n in names} | {f"averaging.sum_{i}" for i in range(len(names))}
    for name, p in setup.module.context.named_parameters():
        average = sum(wi * e[name] for wi, e in zip(w, epochs))
        assert torch.allclose(p, average, atol=1e-6), name
        assert torch.equal(saved[f"context.{name}"], p.detach())
        assert not torch.allclose(epochs[-1][name], average, atol=1e-6)  # the average is not the last epoch


def test_promptsrc_frozen_image_features_are_the_unprompted_towers(clip4):
    from prompt_tuning.objectives import SelfRegulating

    ctx = IVLP(clip4, TASK, n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=2)
    module = PromptTuner(clip4, ctx, TASK, SelfRegulating(clip4, TASK, templates=["a photo of a {}."]))
    images = _images(4)
    prompted = module.image_features({"image": images})
    frozen = module.frozen_image_features({"image": images}, prompted)
    assert torch.equal(frozen, F.normalize(clip4.model.encode_image(images), dim=-1))
    assert not torch.allclose(frozen, F.normalize(prompted, dim=-1))


def test_promptsrc_trains_and_its_checkpoint_evaluates_to_the_same_numbers(shapes_dir, tmp_path, capsys):
    out = tmp_path / "psrc"
    assert main(["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=promptsrc", "protocol.shots=2",
                 "optim.max_epochs=3", "method.averaging.init_args.mean=2", "runtime.progress=false",
                 f"output_dir={out}", *tiny_method_args("ivlp")]) == 0
    result = json.loads((out / "result.json").read_text())
    logged = (out / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert all(k in logged for k in ("train/ce", "train/text_l1", "train/image_l1", "train/logit_kl"))
    capsys.readouterr()
    assert main(["eval", str(out), "runtime.progress=false"]) == 0
    assert json.loads(capsys.readouterr().out)["acc"] == result["metrics"]["acc"]


def test_promptsrc_frozen_features_of_cached_views_come_from_the_cache(shapes_dir, monkeypatch):
    from prompt_tuning.config import compose
    from prompt_tuning.data.datamodule import ViewDataset
    from prompt_tuning.runner import build

    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=promptsrc", "protocol.shots=2",
                   "data.cache_views=3", "runtime.progress=false", *tiny_method_args("promptsrc")])
    setup = build(cfg)
    train = setup.datamodule.train_set
    assert isinstance(train, ViewDataset) and train.frozen.shape[:2] == (3, len(train))
    item = train.view(2, 5)  # the regenerated image of view 3 and the cache's features of that very image
    direct = setup.clip.encode_images(item["image"][None], normalize=False)[0]
    assert torch.allclose(item["frozen"], direct, atol=1e-5)
    calls = []
    original = FrozenCLIP.encode_images

    def counting(self, images, normalize=True, prompts=None):
        calls.append(prompts is None)
        return original(self, images, normalize, prompts)

    monkeypatch.setattr(FrozenCLIP, "encode_images", counting)
    batch = next(iter(setup.datamodule.train_dataloader()))
    setup.module.training_outputs(batch)
    assert calls == [False]  # the prompted pass only: the frozen features came with the batch


def test_a_prompt_depth_beyond_the_model_fails_before_the_run_writes_anything(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=maple", "runtime.progress=false",
                 f"output_dir={out}"]) == 2
    assert "depth=9: the text transformer of" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(UserError, match="depth_vision=5: the image transformer of tiny4 has 4 blocks"):
        IVLP(FrozenCLIP.build("tiny4", None, arch=ARCH4), TASK, depth_text=2, depth_vision=5)


def test_promptsrc_targets_of_a_class_set_are_computed_only_when_training_needs_them(clip4, monkeypatch):
    from prompt_tuning.objectives import SelfRegulating

    calls = []
    original = FrozenCLIP.encode_text
    monkeypatch.setattr(FrozenCLIP, "encode_text", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    obj = SelfRegulating(clip4, TASK, templates=["a photo of a {}.", "art of the {}."])
    obj.set_task(clip4, Task(("x", "y")))  # e.g. an evaluation subset: nothing computed
    assert calls == []
    assert obj.frozen_text.shape == (2, 32) and len(calls) == 2  # one text pass per template, once
    assert obj.frozen_text is obj.frozen_text  # kept
    assert len(calls) == 2
