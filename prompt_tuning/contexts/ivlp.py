"""Independent vision-language prompting (IVLP; Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023,
arXiv:2210.03117, its baseline; muzairkhattak/multimodal-prompt-learning ``trainers/independentVL.py``), and its
two one-tower special cases: deep language prompting (text only) and VPT-deep (Jia et al., ECCV 2022,
arXiv:2203.12119; image only, ``trainers/vpt.py``).

Text side: ``[SOS] ctx_1..ctx_n <rest of the init words> <class> . [EOT]`` at the input, and at the input of text
blocks ``1..depth_text-1`` a new learned set replaces positions ``1..n`` (raw, no positional embedding). Image side:
``n_ctx_vision`` learned tokens appended after the patch tokens (after the positional embedding, before
``ln_pre``), and at the input of image blocks ``1..depth_vision-1`` a new set replaces the last tokens. Every set
is shared by all classes / images, drawn from N(0, 0.02^2). With no text prompts (``depth_text = 0``) the class
features are frozen CLIP's of ``text_template``, computed once; with no visual prompts the image tower is
untouched (so its features may come from the feature cache).

Initialisation of the text context (the authors' rule): with ``ctx_init`` and ``n_ctx <= 4``, the vectors are
the token embeddings of the first ``n_ctx`` tokens of ``ctx_init`` and the prompt text is all of ``ctx_init`` (so
with ``n_ctx = 2`` and "a photo of a" the words "of a" stay fixed tokens); otherwise N(0, 0.02^2) with ``n_ctx``
placeholders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prompt_tuning.clip import FrozenCLIP
from prompt_tuning.contexts.base import Context, Prompts, Task, embed_prompts
from prompt_tuning.errors import UserError


def init_text_context(clip: FrozenCLIP, n_ctx: int, ctx_init: str | None, init_std: float = 0.02):
    """The authors' text context: ``(ctx (n_ctx, width), prompt prefix text)``."""
    if ctx_init and n_ctx <= 4:
        words = ctx_init.replace("_", " ")
        ctx = clip.token_embeddings(clip.tokenize(words))[0, 1 : 1 + n_ctx].clone()
        return ctx, words
    ctx = torch.empty(n_ctx, clip.width, device=clip.device)
    nn.init.normal_(ctx, std=init_std)
    return ctx, " ".join(["X"] * n_ctx)


def check_depth(clip: FrozenCLIP, depth_text: int = 0, depth_vision: int = 0, names=("depth_text", "depth_vision")):
    """A prompt depth deeper than the model's towers is an error naming the argument (raised at construction,
    before a run writes anything)."""
    if depth_text > clip.text_blocks:
        raise UserError(f"{names[0]}={depth_text}: the text transformer of {clip.name} has {clip.text_blocks} blocks")
    if depth_vision and depth_vision > clip.vision_blocks:
        raise UserError(f"{names[1]}={depth_vision}: the image transformer of {clip.name} has {clip.vision_blocks} "
                        "blocks")


def normal_prompts(layers: int, n: int, width: int, device, std: float = 0.02) -> nn.Parameter:
    """``(layers, n, width)`` prompt vectors drawn from N(0, std^2), one set per layer."""
    t = torch.empty(layers, n, width, device=device)
    nn.init.normal_(t, std=std)
    return nn.Parameter(t)


class TextPromptFrame(nn.Module):
    """The fixed tokens around a text context: ``[SOS]`` before it, ``<rest of the prompt> <class> . [EOT]``
    after it, rebuilt for each class set (non-persistent buffers)."""

    def __init__(self, prefix_text: str, n_ctx: int):
        super().__init__()
        self.prefix_text, self.n_ctx = prefix_text, n_ctx

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        names = [name.replace("_", " ") for name in task.classnames]
        embeddings, eot = embed_prompts(clip, [f"{self.prefix_text} {name}." for name in names])
        self.register_buffer("token_prefix", embeddings[:, :1], persistent=False)  # (C, 1, D)
        self.register_buffer("token_suffix", embeddings[:, 1 + self.n_ctx :], persistent=False)  # (C, *, D)
        self.register_buffer("eot_index", eot, persistent=False)

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """``(1, C, L, D)`` prompt embeddings with the shared context ``(n_ctx, D)`` in place."""
        n_cls = self.token_prefix.shape[0]
        ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1).unsqueeze(0)


class IVLP(Context):
    """Deep prompts in both towers, learned independently.

    Args:
        n_ctx_text, depth_text: text context vectors and prompt depth (0: no text prompts).
        n_ctx_vision, depth_vision: visual prompt tokens and depth (0: no visual prompts).
        ctx_init: words the text context starts from (see the module doc).
        text_template: the hand-crafted prompt of the frozen class features when there are no text prompts
            (VPT: "a photo of a {}."); None: the dataset's template.
        init_std: standard deviation of the random initialisations.
    """

    def __init__(self, clip: FrozenCLIP, task: Task, n_ctx_text: int = 2, n_ctx_vision: int = 2,
                 depth_text: int = 9, depth_vision: int = 9, ctx_init: str | None = "a photo of a",
                 text_template: str | None = None, init_std: float = 0.02):
        super().__init__()
        if min(n_ctx_text, n_ctx_vision, depth_text, depth_vision) < 0:
            raise UserError("n_ctx_text, n_ctx_vision, depth_text and depth_vision must be >= 0")
        if not (n_ctx_text and depth_text) and not (n_ctx_vision and depth_vision):
            raise UserError("IVLP needs prompts in at least one tower (n_ctx and depth >= 1 on the text or the "
                            "image side)")
        check_depth(clip, depth_text if n_ctx_text else 0, depth_vision if n_ctx_vision else 0)
        self.text_template = text_template
        self.prompt_text = bool(n_ctx_text and depth_text)
        if self.prompt_text:
            ctx, prefix = init_text_context(clip, n_ctx_text, ctx_init, init_std)
            self.ctx = nn.Parameter(ctx)  # (n_ctx_text, width): the input context
            self.frame = TextPromptFrame(prefix, n_ctx_text)
            self.deep_text = normal_prompts(depth_text - 1, n_ctx_text, clip.width, clip.device, init_std)
        self.prompt_image = bool(n_ctx_vision and depth_vision)
        if self.prompt_image:
            self.visual = normal_prompts(depth_vision, n_ctx_vision, clip.vision_width, clip.device, init_std)
        self.set_task(clip, task)

    @property
    def frozen_image_tower(self) -> bool:  # type: ignore[override]
        return not self.prompt_image

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        if self.prompt_text:
            self.frame.set_task(clip, task)
        else:
            t = Task(task.classnames, self.text_template or task.template)
            self.register_buffer("fixed_text", clip.encode_text(t.prompts()), persistent=False)  # (C, d)

    @property
    def shared_prefix(self) -> int:
        return 1 + self.frame.n_ctx if hasattr(self, "frame") else 0  # [SOS] and the context: every class's

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(self.frame.assemble(self.ctx), self.frame.eot_index, deep=list(self.deep_text.unbind(0)))

    def text_features(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None):
        if self.prompt_text:
            return super().text_features(clip, image_features)
        return F.normalize(self.fixed_text, dim=-1).unsqueeze(0), None

    def visual_prompts(self) -> list[torch.Tensor] | None:
        return list(self.visual.unbind(0)) if self.prompt_image else None
