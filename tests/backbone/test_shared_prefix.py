"""The text-pass options (`TextPassOptions`): the shared-prefix pass equals the full pass within float rounding (the
bound tested here) and keeps fewer activations, prompts that cannot share keep the bit-identical pass, and text
checkpointing and class chunks change no number while keeping far fewer activations."""

import pytest
import torch

from prompt_tuning.apps.bench import _SavedBytes
from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.methods.base import Task
from prompt_tuning.methods.contexts.bayesian import BayesianContext
from prompt_tuning.methods.contexts.cocoop import CoCoOp
from prompt_tuning.methods.contexts.coop import CoOp
from prompt_tuning.methods.contexts.ivlp import IVLP

ARCH = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "patch_size": 8, "head_width": 24},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 4}}
TASK = Task(tuple(f"synthetic class {i}" for i in range(12)) + ("great_crested_grebe", "red circle"))
BOUND = 1e-5  # relative to the features' largest magnitude (measured: about 4e-7 on this model, 1e-6 on ViT-B/16)


@pytest.fixture(scope="module")
def clip() -> FrozenCLIP:
    torch.manual_seed(0)
    return FrozenCLIP.build("tiny-prefix", None, arch=ARCH)


def _pass(clip, ctx, image_features=None, **options):
    """Class features, the gradient of every context parameter and the bytes kept for backward, with the text-pass
    ``options`` (`TextPassOptions` fields: ``shared_prefix``, ``checkpointing``, ``chunk``) for the call."""
    clip = clip.with_options(**options)
    ctx.zero_grad()
    torch.manual_seed(123)  # stochastic contexts draw the same samples in every pass
    with _SavedBytes() as saved:
        feats = ctx.text_features(clip, image_features)[0]
    weights = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))
    (feats * weights).sum().backward()  # a loss whose gradient is not zero (unit vectors: sum of squares is)
    return feats.detach(), [p.grad.clone() for p in ctx.parameters() if p.requires_grad], saved.total


def _both(clip, ctx, image_features=None):
    """Class features and their gradients, without and with the shared prefix."""
    return [_pass(clip, ctx, image_features, shared_prefix=shared)[:2] for shared in (False, True)]


@pytest.mark.parametrize("make", [
    lambda c: CoOp(c, TASK, n_ctx=16),
    lambda c: CoOp(c, TASK, n_ctx=4, ctx_init="a photo of a"),
    lambda c: BayesianContext(c, TASK, n_samples=3),
    lambda c: IVLP(c, TASK, n_ctx_text=4, n_ctx_vision=0, depth_text=3, depth_vision=0),
], ids=["coop", "coop_init", "bayesian_sets", "deep_text"])
def test_shared_prefix_equals_the_full_pass_within_float_rounding(clip, make):
    torch.manual_seed(0)
    ctx = make(clip)
    assert ctx().shared_prefix > 1
    (full, g_full), (shared, g_shared) = _both(clip, ctx)
    assert (full - shared).abs().max() <= BOUND * full.abs().max()
    for a, b in zip(g_full, g_shared):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_shared_prefix_per_image_sets_of_cocoop(clip):
    torch.manual_seed(0)
    ctx = CoCoOp(clip, TASK)
    images = torch.nn.functional.normalize(torch.randn(3, clip.embed_dim), dim=-1)
    (full, _), (shared, _) = _both(clip, ctx, images)
    assert full.shape[0] == 3 and (full - shared).abs().max() <= BOUND * full.abs().max()


@pytest.mark.parametrize("kw", [dict(csc=True), dict(class_token_position="middle"),
                                dict(class_token_position="front")])
def test_contexts_that_cannot_share_keep_the_bit_identical_pass(clip, kw):
    torch.manual_seed(0)
    ctx = CoOp(clip, TASK, n_ctx=8, **kw)
    assert ctx().shared_prefix == 0
    (full, _), (shared, _) = _both(clip, ctx)
    assert torch.equal(full, shared)


def test_shared_prefix_is_used_and_is_cheaper(clip):
    ctx = CoOp(clip, TASK, n_ctx=16)
    kept = []
    for shared in (False, True):
        with _SavedBytes() as saved:
            ctx.text_features(clip.with_options(shared_prefix=shared))[0].sum()
        kept.append(saved.total)
    assert kept[1] < 0.6 * kept[0]  # the 17 shared positions are kept once, not once per class


@pytest.mark.parametrize("shared", [False, True])
def test_text_checkpointing_changes_no_number_and_keeps_less(clip, shared):
    torch.manual_seed(0)
    ctx = CoOp(clip, TASK, n_ctx=8)
    (f0, (g0,), kept0), (f1, (g1,), kept1) = (
        _pass(clip, ctx, shared_prefix=shared, checkpointing=on) for on in (False, True))
    assert torch.equal(f0, f1) and torch.equal(g0, g1)
    assert kept1 < 0.5 * kept0


@pytest.mark.parametrize("shared", [False, True])
def test_training_text_pass_in_chunks_of_classes_keeps_one_chunk(clip, shared):
    torch.manual_seed(0)
    ctx = CoOp(clip, TASK, n_ctx=8)
    (f0, (g0,), kept0), (f1, (g1,), kept1) = (
        _pass(clip, ctx, shared_prefix=shared, chunk=chunk) for chunk in (0, 4))
    assert (f0 - f1).abs().max() <= BOUND * f0.abs().max()
    assert (g0 - g1).abs().max() <= 1e-4 * g0.abs().max()
    assert kept1 < 0.2 * kept0  # the chunks' inputs only; each chunk is recomputed in backward
    with torch.no_grad():  # evaluation is not chunked here (it has its own chunking): the unchunked pass, exactly
        unchunked = clip.with_options(shared_prefix=shared)
        chunked = clip.with_options(shared_prefix=shared, chunk=4)
        assert torch.equal(ctx.text_features(chunked)[0], ctx.text_features(unchunked)[0])
