"""The text passes over prompt embeddings: truncated at the last end-of-text token, and with a shared prefix.

The text transformer is causal, so the feature read at a prompt's end-of-text (EOT) token depends only on the
positions before it. `truncated_pass` runs every projection and MLP on the first ``max(eot) + 1`` positions only;
its attention keeps the full key axis (zero keys and values past those positions, which the causal mask weighs by
exactly 0), so the kernels reduce in the order of open_clip's 77-token pass and the features are bit-identical to
``encode_text``. `shared_block_pass` computes the leading positions that every prompt of a set shares (the start
token and a unified context) once per set; the prompts' own positions attend to them. Equal to the full pass within
float rounding. Both apply a `Hook` at each block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prompt_tuning.backbone.hooks import Projections

MIN_ROWS = 16  # fewest token rows per text pass for which CPU GEMM rounds as in the 77-token pass (measured)


def projections(block: nn.Module) -> Projections:
    """The attention projections of an open_clip residual block."""
    mha = block.attn
    return Projections(mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias)


def attention(mha: nn.MultiheadAttention, w: Projections, h: torch.Tensor, mask: torch.Tensor | None,
              n_keys: int) -> torch.Tensor:
    """``mha``'s self-attention with projections ``w`` for queries ``h`` ``(n, L, d)``, keys and values zero-padded
    to ``n_keys`` positions (``mask`` ``(L, n_keys)`` or None).

    The ops follow ``F.multi_head_attention_forward`` step by step, in its sequence-first layout, so that each
    matrix product has the same memory layout, and hence the same rounding, as in open_clip's own pass.
    """
    n, length, d = h.shape
    heads = mha.num_heads
    proj = F.linear(h.transpose(0, 1), w.in_weight, w.in_bias)  # (L, n, 3d)
    q, k, v = proj.unflatten(-1, (3, d)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
    k, v = (F.pad(z, (0, 0, 0, 0, 0, n_keys - length)) for z in (k, v))  # (n_keys, n, d), zeros past L
    q, k, v = (z.view(z.shape[0], n * heads, -1).transpose(0, 1) for z in (q, k, v))
    q, k, v = (z.view(n, heads, z.shape[1], -1) for z in (q, k, v))  # (n, heads, len, d/heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype)[None, None])
    out = out.permute(2, 0, 1, 3).contiguous().view(length * n, d)
    return F.linear(out, w.out_weight, w.out_bias).view(length, n, d).transpose(0, 1)


def block_pass(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, n_keys: int,
               w: Projections) -> torch.Tensor:
    """One standard open_clip block (pre-norm attention and MLP, layer scales) on ``x`` ``(n, L, d)``."""
    x = x + block.ls_1(attention(block.attn, w, block.ln_1(x), mask, n_keys))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def shared_block_pass(block: nn.Module, xp: torch.Tensor, xr: torch.Tensor, per: int, mask: torch.Tensor,
                      w: Projections) -> tuple[torch.Tensor, torch.Tensor]:
    """One block over a shared prefix ``xp`` ``(S, P, d)`` and the prompts' own positions ``xr`` ``(S * per, R, d)``."""
    ap, ar = _shared_attention(block.attn.num_heads, w, block.ln_1(xp), block.ln_1(xr), per, mask)
    xp, xr = xp + block.ls_1(ap), xr + block.ls_1(ar)
    return xp + block.ls_2(block.mlp(block.ln_2(xp))), xr + block.ls_2(block.mlp(block.ln_2(xr)))


def _shared_attention(heads: int, w: Projections, hp: torch.Tensor, hr: torch.Tensor, per: int,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal self-attention of a shared prefix ``hp`` ``(S, P, d)`` and of each prompt's own positions ``hr``
    ``(S * per, R, d)``, which attend to their set's prefix keys and to their own keys (``mask`` ``(R, P + R)``)."""
    d = hp.shape[-1]

    def split(z: torch.Tensor) -> torch.Tensor:  # (..., L, d) -> (..., heads, L, d / heads)
        return z.unflatten(-1, (heads, d // heads)).transpose(-3, -2)

    qp, kp, vp = (split(z) for z in F.linear(hp, w.in_weight, w.in_bias).chunk(3, dim=-1))
    qr, kr, vr = (split(z) for z in F.linear(hr, w.in_weight, w.in_bias).chunk(3, dim=-1))
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)  # (S, heads, P, dh)

    def with_prefix(zp: torch.Tensor, zr: torch.Tensor) -> torch.Tensor:  # prefix keys of the prompt's set first
        zp = zp.unsqueeze(1).expand(-1, per, -1, -1, -1).flatten(0, 1)  # (S * per, heads, P, dh)
        return torch.cat([zp, zr], dim=2)

    out_r = F.scaled_dot_product_attention(qr, with_prefix(kp, kr), with_prefix(vp, vr), attn_mask=mask)

    def merge(z: torch.Tensor) -> torch.Tensor:
        return F.linear(z.transpose(-3, -2).flatten(-2), w.out_weight, w.out_bias)

    return merge(out_p), merge(out_r)
