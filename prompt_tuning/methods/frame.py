"""The prompt frame: the fixed tokens around a learned context, ``[SOS] <context> <rest of the prompt> <class> .
[EOT]``, rebuilt for each class set (non-persistent buffers), and the context put in place.

Every text context uses it (CoOp and its relatives, IVLP, MaPLe, PromptSRC), and so does the bench's reference
path, with the frame kept at all 77 positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from prompt_tuning.core.errors import UserError

if TYPE_CHECKING:
    from prompt_tuning.backbone import FrozenCLIP
    from prompt_tuning.methods.base import Task

POSITIONS = ("end", "middle", "front")


def embed_prompts(clip: FrozenCLIP, texts: list[str], full_length: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings of `texts`, cut after the longest end-of-text token (all ``context_length`` positions
    with ``full_length``), and each text's EOT position.

    Returns:
        ``(n, L, width)`` embeddings with ``L = max(eot) + 1``, and ``(n,)`` EOT positions.
    """
    tokens = clip.tokenize(texts)
    eot = clip.eot_index(tokens)
    embeddings = clip.token_embeddings(tokens)
    return (embeddings if full_length else embeddings[:, : int(eot.max()) + 1]), eot


class PromptFrame(nn.Module):
    """The fixed text around ``n_ctx`` context vectors: the prompt ``f"{prefix_text} {class}."`` with its first
    ``n_ctx`` tokens after ``[SOS]`` replaced by the context.

    Args:
        prefix_text: the words (or ``X`` placeholders) the context stands in for, and any fixed words after it.
        n_ctx: context vectors.
        position: where the class name goes: ``end`` (``v_1..v_M CLASS.``), ``middle``
            (``v_1..v_M/2 CLASS v_M/2+1..v_M.``) or ``front`` (``CLASS v_1..v_M.``).
        full_length: keep all ``context_length`` positions (the authors' 77-token prompts; the bench's reference).
    """

    def __init__(self, prefix_text: str, n_ctx: int, position: str = "end", full_length: bool = False):
        super().__init__()
        if position not in POSITIONS:
            raise UserError(f"class_token_position={position!r}: choose one of {', '.join(POSITIONS)}")
        self.prefix_text, self.n_ctx, self.position, self.full_length = prefix_text, n_ctx, position, full_length

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        names = [name.replace("_", " ") for name in task.classnames]
        embeddings, eot = embed_prompts(clip, [f"{self.prefix_text} {name}." for name in names], self.full_length)
        self.register_buffer("token_prefix", embeddings[:, :1], persistent=False)  # (C, 1, D): SOS
        self.register_buffer("token_suffix", embeddings[:, 1 + self.n_ctx :], persistent=False)  # CLASS . EOT
        self.register_buffer("eot_index", eot, persistent=False)
        order = None
        if self.position != "end":
            name_lens = [clip.n_tokens(name) for name in names]
            order = _reorder(name_lens, self.n_ctx, embeddings.shape[1], self.position).to(embeddings.device)
        self.register_buffer("order", order, persistent=False)  # (C, L) or None

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``(S, C, L, D)`` from a context shared by the classes (``(n_ctx, D)``, or one per set
        ``(S, n_ctx, D)``) or class-specific (``(S, C, n_ctx, D)``)."""
        ctx = ctx.unsqueeze(0) if ctx.dim() == 2 else ctx
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

    def shared_prefix(self, class_specific: bool = False) -> int:
        """Positions every class of a set shares: ``[SOS] v_1..v_M`` for a unified context before the class name
        (0 for a class-specific context or a class name inside the context)."""
        return 0 if class_specific or self.position != "end" else 1 + self.n_ctx


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
