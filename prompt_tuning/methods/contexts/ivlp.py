"""Independent vision-language prompting (IVLP; Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023,
arXiv:2210.03117, its baseline; muzairkhattak/multimodal-prompt-learning ``trainers/independentVL.py``), and its
two one-tower special cases: deep language prompting (text only) and VPT-deep (Jia et al., ECCV 2022,
arXiv:2203.12119; image only, ``trainers/vpt.py``).

Text side: ``[SOS] ctx_1..ctx_n <rest of the init words> <class> . [EOT]`` at the input, and at the input of text
blocks ``1..depth_text-1`` a new learned set replaces positions ``1..n`` (raw, no positional embedding;
`prompt_tuning.methods.prompt_hooks.DeepTextPrompts`). Image side: ``n_ctx_vision`` learned tokens appended after
the patch tokens (after the positional embedding, before ``ln_pre``), and at the input of image blocks
``1..depth_vision-1`` a new set replaces the last tokens (`VisualPrompts`). Every set is shared by all classes /
images, drawn from N(0, 0.02^2). With no text prompts (``depth_text = 0``) the class features are frozen CLIP's of
``text_template``, computed once; with no visual prompts the image tower is untouched (so its features may come
from the feature cache).

Initialisation of the text context (the authors' rule): with ``ctx_init`` and ``n_ctx <= 4``, the vectors are
the token embeddings of the first ``n_ctx`` tokens of ``ctx_init`` and the prompt text is all of ``ctx_init`` (so
with ``n_ctx = 2`` and "a photo of a" the words "of a" stay fixed tokens); otherwise N(0, 0.02^2) with ``n_ctx``
placeholders.
"""

from __future__ import annotations

import torch
from torch import nn

from prompt_tuning.backbone import FrozenCLIP, Hook
from prompt_tuning.core.errors import UserError
from prompt_tuning.methods.base import Capabilities, Context, Prompts, Task, TextSide
from prompt_tuning.methods.classifier import zero_shot_classifier
from prompt_tuning.methods.frame import PromptFrame, embed_prompts
from prompt_tuning.methods.prompt_hooks import DeepTextPrompts, VisualPrompts


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
            self.frame = PromptFrame(prefix, n_ctx_text)
            self.deep_text = normal_prompts(depth_text - 1, n_ctx_text, clip.width, clip.device, init_std)
        self.prompt_image = bool(n_ctx_vision and depth_vision)
        if self.prompt_image:
            self.visual = normal_prompts(depth_vision, n_ctx_vision, clip.vision_width, clip.device, init_std)
        self.capabilities = Capabilities(image_tower=self.prompt_image)
        self.set_task(clip, task)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        if self.prompt_text:
            self.frame.set_task(clip, task)
            return
        fixed = Task(task.classnames, self.text_template or task.template)
        embeddings, eot = embed_prompts(clip, fixed.prompts())
        self.register_buffer("fixed_embeddings", embeddings, persistent=False)  # (C, L, D): the template's prompts
        self.register_buffer("fixed_eot", eot, persistent=False)
        self.register_buffer("fixed_text", zero_shot_classifier(clip, task.classnames, fixed.template),
                             persistent=False)  # (C, d): their frozen features, computed once

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        if not self.prompt_text:  # the hand-crafted prompts, as they are
            return Prompts(self.fixed_embeddings.unsqueeze(0), self.fixed_eot)
        return Prompts(self.frame.assemble(self.ctx), self.frame.eot_index, shared_prefix=self.frame.shared_prefix(),
                       text_hook=DeepTextPrompts(self.deep_text.unbind(0)))

    def text_side(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> TextSide:
        if self.prompt_text:
            return super().text_side(clip, image_features)
        return TextSide(self.fixed_text.unsqueeze(0))  # no text prompts: frozen CLIP's, computed once

    def image_hook(self) -> Hook | None:
        return VisualPrompts(self.visual.unbind(0)) if self.prompt_image else None
