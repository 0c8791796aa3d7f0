"""Hook points in both towers: how a method changes a pass of the frozen CLIP without the backbone knowing it.

A method hands the backbone a `Hook` for the text tower (with its prompts) or the image tower (`Context.image_hook`).
The backbone calls it at fixed points of every pass, with the hidden states and a `Layout` saying what their rows
and positions hold:

* ``start(x, layout)``: the token sequence entering the first block (text: token plus positional embeddings;
  image: class token and patches with their positional embedding, before ``ln_pre``). A hook may append tokens.
* ``before_block(i, x, layout)`` / ``after_block(i, x, layout)``: around residual block ``i`` (0-based). A hook
  may replace positions (deep prompts), add a residual (adapters), or append/replace tokens.
* ``attention(i, weights)``: the attention projections block ``i`` runs with; a hook may return others (low-rank
  updates). Returning ``weights`` itself keeps open_clip's own block.

Every default leaves the pass as it is: with a `Hook()` the passes equal open_clip's own. Two declarations let the
backbone keep its fast text passes exact: ``causal`` (what the hook does at a position depends on that position
and earlier ones only, so the pass may stop at the last end-of-text token) and ``class_uniform`` (every class's
row is changed alike, so the positions the classes of a prompt set share may be computed once for the set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class Projections:
    """The attention projections of a block: ``in_weight`` ``(3 w, w)`` (query, key, value stacked) and
    ``in_bias`` ``(3 w,)``, ``out_weight`` ``(w, w)`` and ``out_bias`` ``(w,)``."""

    in_weight: torch.Tensor
    in_bias: torch.Tensor | None
    out_weight: torch.Tensor
    out_bias: torch.Tensor | None


@dataclass(frozen=True)
class Layout:
    """What the hidden states ``x`` ``(rows, length, width)`` at a hook point hold.

    Attributes:
        tower: ``text`` or ``image``.
        blocks: residual blocks of the tower.
        start: absolute position of ``x[:, 0]`` (the shared-prefix text pass splits a prompt into the positions
            its set shares, from 0, and its own, from ``start``).
        classes: text: rows are ordered (set, class), row ``r`` is class ``class_offset + r % classes`` of the
            task (a pass over a chunk of classes starts at ``class_offset``); 0 for the image tower.
        shared: text: the rows are prompt *sets*, each the positions every class of the set shares.
        eot_index: text: each prompt's end-of-text position ``(classes,)``, absolute.
        patches: image: patch tokens after the class token; tokens past ``1 + patches`` are a hook's own.
    """

    tower: Literal["text", "image"]
    blocks: int
    start: int = 0
    classes: int = 0
    shared: bool = False
    eot_index: torch.Tensor | None = None
    patches: int = 0
    class_offset: int = 0


class Hook:
    """A method's change to one tower's pass (see the module doc). Subclass and override what you change."""

    causal: bool = True
    class_uniform: bool = True

    def start(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        return x

    def before_block(self, i: int, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        return x

    def after_block(self, i: int, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        return x

    def attention(self, i: int, weights: Projections) -> Projections:
        return weights


class Hooks(Hook):
    """Several hooks applied one after the other (e.g. a method's prompts and a plug-in's adapter)."""

    def __init__(self, *hooks: Hook | None):
        self.hooks = [h for h in hooks if h is not None]
        self.causal = all(h.causal for h in self.hooks)
        self.class_uniform = all(h.class_uniform for h in self.hooks)

    def start(self, x, layout):
        for h in self.hooks:
            x = h.start(x, layout)
        return x

    def before_block(self, i, x, layout):
        for h in self.hooks:
            x = h.before_block(i, x, layout)
        return x

    def after_block(self, i, x, layout):
        for h in self.hooks:
            x = h.after_block(i, x, layout)
        return x

    def attention(self, i, weights):
        for h in self.hooks:
            weights = h.attention(i, weights)
        return weights
