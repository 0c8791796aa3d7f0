"""Prompt hooks in both towers (`DeepTextPrompts`, `VisualPrompts`): the hooked text and image passes held against
plain step-by-step loops written here in the authors' order (MaPLe/IVLP ``clip/model.py``), zero prompts equal to
open_clip exactly, too-deep prompts and prompts over the end-of-text token refused, and visual prompts on a ResNet
tower refused with a clear error."""

import pytest
import torch

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.core.errors import UserError
from prompt_tuning.methods.base import Task
from prompt_tuning.methods.contexts.ivlp import IVLP
from prompt_tuning.methods.contexts.maple import MaPLe
from prompt_tuning.methods.prompt_hooks import DeepTextPrompts, VisualPrompts
from tests.helpers import random_images

# 4 blocks per tower and different widths, so that depths 1-4 are all exercised
TASK = Task(("red circle", "great_crested_grebe", "dog", "blue square"), "a photo of a {}.")



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


def _flat(prompts):
    s, c, length, d = prompts.embeddings.shape
    return prompts.embeddings.reshape(s * c, length, d), prompts.eot_index.repeat(s)


# ----------------------------------------------------------------------------------------- the passes
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_deep_text_pass_equals_the_authors_loop(clip4, depth):
    torch.manual_seed(depth)
    ctx = IVLP(clip4, TASK, n_ctx_text=2, n_ctx_vision=0, depth_text=depth, depth_vision=0)
    ours = clip4.encode_prompts(*_flat(ctx()), hook=DeepTextPrompts(list(ctx.deep_text), start=1))
    ref = reference_text(clip4, "a photo of a", ctx.ctx, list(ctx.deep_text), TASK.classnames)
    assert (ours - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_deep_image_pass_equals_the_authors_loop(clip4, depth):
    torch.manual_seed(depth)
    prompts = [torch.randn(3, clip4.vision_width) * 0.5 for _ in range(depth)]
    images = random_images()
    ours = clip4.encode_images(images, normalize=False, hook=VisualPrompts(prompts))
    assert (ours - reference_image(clip4, images, prompts)).abs().max().item() <= 1e-6


def test_zero_prompts_equal_open_clip_exactly(clip4):
    images = random_images(5)
    plain = clip4.model.encode_image(images)
    assert torch.equal(clip4.encode_images(images, normalize=False, hook=VisualPrompts([])), plain)
    empty = [torch.zeros(0, clip4.vision_width)] * 3
    assert torch.equal(clip4.encode_images(images, normalize=False, hook=VisualPrompts(empty)), plain)
    tokens = clip4.tokenize(TASK.prompts())
    emb, eot = clip4.token_embeddings(tokens), clip4.eot_index(tokens)
    assert torch.equal(clip4.encode_prompts(emb, eot, hook=DeepTextPrompts([])), clip4.encode_prompts(emb, eot))
    assert torch.equal(clip4.encode_prompts(emb, eot), clip4.model.encode_text(tokens))


def test_deep_prompts_deeper_than_the_tower_or_over_the_eot_are_errors(clip4):
    tokens = clip4.tokenize(["a b"])
    emb, eot = clip4.token_embeddings(tokens), clip4.eot_index(tokens)
    with pytest.raises(UserError, match="at most the block count"):
        clip4.encode_prompts(emb, eot, hook=DeepTextPrompts([torch.zeros(1, clip4.width)] * 4))
    with pytest.raises(UserError, match="end-of-text"):
        clip4.encode_prompts(emb, eot, hook=DeepTextPrompts([torch.zeros(3, clip4.width)]))
    with pytest.raises(UserError, match="at most the block count"):
        clip4.encode_images(random_images(1), hook=VisualPrompts([torch.zeros(1, clip4.vision_width)] * 5))


def test_visual_prompts_on_a_resnet_are_a_clear_error():
    arch = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    clip = FrozenCLIP.build("tiny-rn", None, arch=arch)
    with pytest.raises(UserError, match="visual prompts and image-tower hooks need a ViT image tower; this model's "
                                        "is ModifiedResNet"):
        clip.encode_images(random_images(1), hook=VisualPrompts([torch.zeros(2, 8)]))
    with pytest.raises(UserError, match="ViT image tower"):
        MaPLe(clip, TASK, depth=1)
