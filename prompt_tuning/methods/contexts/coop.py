"""CoOp: Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022,
arXiv:2109.01134).

The prompt ``[SOS] v_1 ... v_M [CLASS] . [EOT]`` has M learned context vectors in place of words. They are shared
by all classes (unified) or learned per class (class-specific, ``csc``), start from the embeddings of words
(``ctx_init``) or from N(0, 0.02), and the class name goes at the end, in the middle or at the front.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.core.errors import UserError
from prompt_tuning.methods.base import Context, Prompts, Task
from prompt_tuning.methods.frame import POSITIONS, PromptFrame


class CoOp(Context):
    """Learned context vectors in place of the words of a prompt.

    Args:
        clip: the frozen model (its token embeddings initialise and frame the context).
        task: class names to build prompts for.
        n_ctx: number of context vectors M (ignored with ``ctx_init``, which sets M to its word count).
        ctx_init: words to initialise the context from (``"a photo of a"``); None draws N(0, init_std). As in
            the authors' code, M is the number of space-separated words and the vectors are the first M token
            embeddings of the words (a word of several BPE tokens pushes the last tokens out of the context).
        csc: class-specific context, one set of M vectors per class; with ``ctx_init`` every class starts from
            the same words (the reference code ignores ``csc`` when ``ctx_init`` is given).
        class_token_position: ``end`` (``v_1..v_M CLASS.``), ``middle`` (``v_1..v_M/2 CLASS v_M/2+1..v_M.``) or
            ``front`` (``CLASS v_1..v_M.``).
        init_std: standard deviation of the random initialisation.
        pad_init: with ``ctx_init``, keep ``n_ctx`` vectors and put the words' embeddings in the last ones,
            zeros before (ProGrad's initialisation); otherwise ``n_ctx`` becomes the words' count.
    """

    def __init__(
        self,
        clip: FrozenCLIP,
        task: Task,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        csc: bool = False,
        class_token_position: str = "end",
        init_std: float = 0.02,
        pad_init: bool = False,
    ):
        super().__init__()
        if class_token_position not in POSITIONS:
            raise UserError(f"class_token_position={class_token_position!r}: choose one of {', '.join(POSITIONS)}")
        n_cls = len(task.classnames)
        if ctx_init:
            words = ctx_init.replace("_", " ")
            # the authors count words, not BPE tokens, and take that many token embeddings after SOS: for
            # "a type of pet, a photo of a" that is 8 tokens ("pet" "," ... "of"); the remaining words stay in
            # the fixed text after the context (see PromptFrame)
            n_words = len(words.split(" "))
            ctx = clip.token_embeddings(clip.tokenize(words))[0, 1 : 1 + n_words].clone()  # (n_words, D)
            prefix_text = words
            if pad_init:
                if n_ctx < n_words:
                    raise UserError(f"n_ctx={n_ctx} is shorter than ctx_init={ctx_init!r} ({n_words} words)")
                ctx = torch.cat([ctx.new_zeros(n_ctx - n_words, ctx.shape[1]), ctx])
                prefix_text = " ".join(["X"] * (n_ctx - n_words) + [words])
            n_ctx = ctx.shape[0]
            if csc:
                ctx = ctx.unsqueeze(0).repeat(n_cls, 1, 1)  # (n_cls, n_ctx, D)
        else:
            if n_ctx < 1:
                raise UserError(f"n_ctx={n_ctx}: a context needs at least one vector")
            shape = (n_cls, n_ctx, clip.width) if csc else (n_ctx, clip.width)
            ctx = torch.empty(shape, device=clip.device)
            nn.init.normal_(ctx, std=init_std)
            prefix_text = " ".join(["X"] * n_ctx)  # placeholders, replaced by the context vectors
        self.ctx = nn.Parameter(ctx)
        self.n_ctx = n_ctx
        self.csc = csc
        if csc:  # a class-specific context belongs to its training classes
            self.capabilities = dataclasses.replace(self.capabilities, class_bound=True)
        self.frame = PromptFrame(prefix_text, n_ctx, class_token_position)
        self.set_task(clip, task)

    @property
    def prefix_text(self) -> str:
        """The prompt's text before the class name (the context's words or ``X`` placeholders)."""
        return self.frame.prefix_text

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        if self.csc and self.ctx.shape[0] != len(task.classnames):
            raise UserError(
                f"this class-specific context was learned for {self.ctx.shape[0]} classes and cannot prompt "
                f"{len(task.classnames)} other classes; use a unified context (csc=false) to transfer to new classes"
            )
        self.frame.set_task(clip, task)

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``(S, C, L, D)`` of context vectors ``(S, n_ctx, D)`` or ``(S, C, n_ctx, D)``."""
        return self.frame.assemble(ctx)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(self.assemble(self.ctx.unsqueeze(0)), self.frame.eot_index,
                       shared_prefix=self.frame.shared_prefix(self.csc))
