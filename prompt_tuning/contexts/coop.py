"""CoOp: Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022,
arXiv:2109.01134).

The prompt ``[SOS] v_1 ... v_M [CLASS] . [EOT]`` has M learned context vectors in place of words. They are shared
by all classes (unified) or learned per class (class-specific, ``csc``), start from the embeddings of words
(``ctx_init``) or from N(0, 0.02), and the class name goes at the end, in the middle or at the front.
"""

from __future__ import annotations

import torch
from torch import nn

from prompt_tuning.clip import FrozenCLIP
from prompt_tuning.contexts.base import Context, Prompts, Task, embed_prompts
from prompt_tuning.errors import UserError

POSITIONS = ("end", "middle", "front")


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
            # the fixed text after the context (see set_task)
            n_words = len(words.split(" "))
            ctx = clip.token_embeddings(clip.tokenize(words))[0, 1 : 1 + n_words].clone()  # (n_words, D)
            self.prefix_text = words
            if pad_init:
                if n_ctx < n_words:
                    raise UserError(f"n_ctx={n_ctx} is shorter than ctx_init={ctx_init!r} ({n_words} words)")
                ctx = torch.cat([ctx.new_zeros(n_ctx - n_words, ctx.shape[1]), ctx])
                self.prefix_text = " ".join(["X"] * (n_ctx - n_words) + [words])
            n_ctx = ctx.shape[0]
            if csc:
                ctx = ctx.unsqueeze(0).repeat(n_cls, 1, 1)  # (n_cls, n_ctx, D)
        else:
            if n_ctx < 1:
                raise UserError(f"n_ctx={n_ctx}: a context needs at least one vector")
            shape = (n_cls, n_ctx, clip.width) if csc else (n_ctx, clip.width)
            ctx = torch.empty(shape, device=clip.device)
            nn.init.normal_(ctx, std=init_std)
            self.prefix_text = " ".join(["X"] * n_ctx)  # placeholders, replaced by the context vectors
        self.ctx = nn.Parameter(ctx)
        self.n_ctx = n_ctx
        self.csc = csc
        self.class_token_position = class_token_position
        self.set_task(clip, task)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        names = [name.replace("_", " ") for name in task.classnames]
        if self.csc and self.ctx.shape[0] != len(names):
            raise UserError(
                f"this class-specific context was learned for {self.ctx.shape[0]} classes and cannot prompt "
                f"{len(names)} other classes; use a unified context (csc=false) to transfer to new classes"
            )
        embeddings, eot = embed_prompts(clip, [f"{self.prefix_text} {name}." for name in names])
        self.register_buffer("token_prefix", embeddings[:, :1], persistent=False)  # (n_cls, 1, D): SOS
        self.register_buffer("token_suffix", embeddings[:, 1 + self.n_ctx :], persistent=False)  # CLASS . EOT
        self.register_buffer("eot_index", eot, persistent=False)
        order = None
        if self.class_token_position != "end":
            name_lens = [clip.n_tokens(name) for name in names]
            order = _reorder(name_lens, self.n_ctx, embeddings.shape[1], self.class_token_position)
            order = order.to(embeddings.device)
        self.register_buffer("order", order, persistent=False)  # (n_cls, L) or None

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``(S, C, L, D)`` from context vectors shared by the classes of a set
        ``(S, n_ctx, D)`` or class-specific ``(S, C, n_ctx, D)``."""
        s = ctx.shape[0]
        n_cls, _, dim = self.token_prefix.shape
        if ctx.dim() == 3:
            ctx = ctx.unsqueeze(1).expand(-1, n_cls, -1, -1)
        prompts = torch.cat([
            self.token_prefix.expand(s, -1, -1, -1), ctx, self.token_suffix.expand(s, -1, -1, -1)
        ], dim=2)  # (S, C, L, D), class at the end
        if self.order is not None:
            index = self.order.view(1, n_cls, -1, 1).expand(s, -1, -1, dim)
            prompts = prompts.gather(2, index)
        return prompts

    @property
    def shared_prefix(self) -> int:
        """``[SOS] v_1..v_M`` is the same for every class of a unified, class-at-the-end context."""
        return 0 if self.csc or self.class_token_position != "end" else 1 + self.n_ctx

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(self.assemble(self.ctx.unsqueeze(0)), self.eot_index)


def _reorder(name_lens: list[int], n_ctx: int, length: int, position: str) -> torch.Tensor:
    """For each class, the source position (in the class-at-end layout) of every output position.

    The class-at-end layout is ``[SOS, ctx_1..ctx_M, name_1..name_k, rest]``; ``front`` moves the name before
    the context, ``middle`` between the first ``M // 2`` context vectors and the others.
    """
    half = n_ctx // 2 if position == "middle" else 0
    rows = []
    for k in name_lens:
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + k))
        rest = list(range(1 + n_ctx + k, length))
        rows.append([0] + ctx[:half] + name + ctx[half:] + rest)
    return torch.tensor(rows, dtype=torch.long)
