"""FrozenCLIP: a frozen open_clip model with a text pass that takes prompt *embeddings*.

Prompt learning (CoOp, arXiv:2109.01134, and its successors) replaces some token embeddings of a prompt with
learned vectors, so the text encoder must start from embeddings rather than token ids. `encode_prompts` does
that, and runs the causal text transformer only up to the last end-of-text (EOT) position of the batch: the
feature read at an EOT token depends only on the tokens before it, so the result is the same as open_clip's own
77-token `encode_text`, for a fraction of the cost.

The open_clip model is held *outside* the module tree: it never appears in `state_dict()` or `parameters()`
(checkpoints hold only what a method learns), it follows `.to(device)` / dtype casts, and it stays in eval mode
when Lightning calls `.train()`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from omegaconf import DictConfig, OmegaConf
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from prompt_tuning.errors import UserError, close_matches

SUPPORTED_POOLING = ("argmax", "eos")
MIN_ROWS = 16  # fewest token rows per text pass for which CPU GEMM rounds as in the 77-token pass (measured)


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for this model (from open_clip's preprocess config)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


class _TextTower:
    """The pieces of an open_clip causal text transformer that a prompt pass needs."""

    def __init__(self, model: nn.Module):
        owner = model if isinstance(model, open_clip.CLIP) else getattr(model, "text", None)
        kind = type(owner if owner is not None else model).__name__
        if owner is None or not hasattr(owner, "token_embedding") or not hasattr(owner, "transformer"):
            raise UserError(
                f"the text tower of this model ({kind}) cannot be prompted: prompt-tuning needs open_clip's "
                "built-in causal text transformer (CLIP or CustomTextCLIP with a TextTransformer); "
                "Hugging Face text towers are not supported yet"
            )
        pool = getattr(owner, "text_pool_type", getattr(owner, "pool_type", None))
        mask = getattr(owner, "attn_mask", None)
        if getattr(owner, "cls_emb", None) is not None or mask is None or pool not in SUPPORTED_POOLING:
            raise UserError(
                f"the text tower of this model ({kind}, pool_type={pool!r}, causal mask: {mask is not None}, "
                f"class embedding: {getattr(owner, 'cls_emb', None) is not None}) cannot be prompted: "
                f"prompt-tuning needs a causal text transformer pooled at the end-of-text token "
                f"(pool_type in {SUPPORTED_POOLING}, no appended class embedding)"
            )
        self.owner = owner
        self.pool = pool
        self.eos_id = getattr(owner, "text_eos_id", getattr(owner, "eos_id", None))
        # blocks whose attention encode_prompts can run with truncated queries (open_clip's standard block)
        self.blocks_known = all(
            type(b) is ResidualAttentionBlock
            and not hasattr(b, "ln_1_kv")
            and isinstance(b.attn, nn.MultiheadAttention)
            and b.attn._qkv_same_embed_dim
            and b.attn.in_proj_weight is not None
            for b in owner.transformer.resblocks
        )


class FrozenCLIP(nn.Module):
    """A frozen open_clip model: tokenize, embed tokens, encode images, encode prompt embeddings.

    Build one with `FrozenCLIP.build(...)`. Nothing in it is trainable; gradients still flow *through*
    `encode_prompts` to the prompt embeddings a context module provides.

    Args:
        model: an open_clip `CLIP` (or `CustomTextCLIP` with a `TextTransformer`).
        tokenizer: the matching open_clip tokenizer.
        preprocess: image size and normalisation the model expects.
        name: architecture name, for cache keys and results.
        weights: identity of the weights (pretrained tag, checkpoint path, or ``random``).
    """

    def __init__(self, model: nn.Module, tokenizer, preprocess: Preprocess, name: str, weights: str):
        super().__init__()
        model.eval().requires_grad_(False)
        object.__setattr__(self, "model", model)  # deliberately not a registered submodule (see module doc)
        self._text = _TextTower(model)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.weights = weights
        self._image_digest: str | None = None
        self.shared_prefix_pass = False  # encode_prompts: compute a shared prefix once per set (model.shared_prefix)
        self.text_checkpointing = False  # recompute the text blocks in backward (runtime.text_checkpointing)
        self.text_chunk = 0  # contexts' training text pass: classes per checkpointed chunk (runtime.text_chunk)

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        name: str = "ViT-B-16",
        pretrained: str | None = "openai",
        arch: dict | str | None = None,
        cache_dir: str | None = None,
        quick_gelu: bool | str = "auto",
    ) -> FrozenCLIP:
        """Build from an open_clip architecture name, a pretrained tag or local checkpoint, or a config dict.

        Args:
            name: open_clip architecture (``ViT-B-16``, ``RN50``, ...); with ``arch`` it only names the model.
            pretrained: an open_clip tag for ``name`` (``openai``, ``laion2b_s34b_b88k``...), a local checkpoint
                file, or None for random weights. OpenAI weights get QuickGELU automatically, as they need.
            arch: an architecture config dict, or the path of a JSON file holding one (open_clip's
                ``model_configs`` format); the model is built from it with random weights (then ``pretrained``
                may still name a local checkpoint). Used by tests and the demo for tiny models.
            cache_dir: where open_clip caches downloaded weights.
            quick_gelu: ``auto`` uses QuickGELU where the weights need it: OpenAI's pretrained tags, and local
                files in OpenAI's format (the TorchScript archives OpenAI released, or a state dict with their
                ``input_resolution``/``context_length``/``vocab_size`` entries); ``true``/``false`` force it.
                Weights trained with QuickGELU give other features under GELU, and open_clip only warns.
        """
        force = _quick_gelu_setting(quick_gelu)
        local = bool(pretrained) and os.path.isfile(str(pretrained))
        state, openai_format = read_checkpoint(pretrained) if local else (None, False)
        if arch is not None:
            cfg = _read_arch(arch)
            model_cls = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
            if pretrained and not local:
                raise UserError(f"model.pretrained={pretrained!r}: with model.arch it must be a checkpoint file")
            cfg["quick_gelu"] = (cfg.get("quick_gelu", False) or openai_format) if force is None else force
            try:
                model = model_cls(**cfg)
            except TypeError as e:
                raise UserError(f"model architecture config {arch if isinstance(arch, str) else ''}: {e}") from e
            weights = "random"
            if local:
                _load_weights(model, state, openai_format, pretrained)
                weights = str(Path(pretrained).resolve())
            vision = cfg.get("vision_cfg", {})
            size = vision.get("image_size", 224)
            preprocess = Preprocess(
                image_size=size if isinstance(size, int) else size[0],
                mean=tuple(open_clip.OPENAI_DATASET_MEAN),
                std=tuple(open_clip.OPENAI_DATASET_STD),
            )
            tokenizer = open_clip.SimpleTokenizer(context_length=cfg.get("text_cfg", {}).get("context_length", 77))
            return cls(model, tokenizer, preprocess, name, weights)

        if name not in open_clip.list_models():
            raise UserError(
                f"model.name={name!r} is not an open_clip architecture{close_matches(name, open_clip.list_models())}"
                " (see open_clip.list_models())"
            )
        needs_quick_gelu = openai_format
        if pretrained and not local:
            tag = open_clip.get_pretrained_cfg(name, pretrained)
            if not tag:
                tags = open_clip.list_pretrained_tags_by_model(name)
                raise UserError(
                    f"model.pretrained={pretrained!r} is neither a pretrained tag of {name} nor an existing file"
                    f"{close_matches(pretrained, tags)} (tags for {name}: {', '.join(tags) or 'none'})"
                )
            needs_quick_gelu = bool(tag.get("quick_gelu", False))  # OpenAI weights need QuickGELU
        quick = needs_quick_gelu if force is None else force
        model = _create(name, None if local else pretrained or None, quick, cache_dir)
        if local:
            _load_weights(model, state, openai_format, pretrained)
        pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pcfg.get("size", model.visual.image_size)
        preprocess = Preprocess(
            image_size=size if isinstance(size, int) else size[0],
            mean=tuple(pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(pcfg.get("std", open_clip.OPENAI_DATASET_STD)),
            interpolation=pcfg.get("interpolation", "bicubic"),
        )
        weights = str(Path(pretrained).resolve()) if pretrained and os.path.isfile(pretrained) else (
            pretrained or "random"
        )
        return cls(model, open_clip.get_tokenizer(name), preprocess, name, weights)

    # ------------------------------------------------------------------------------------- module plumbing
    def _apply(self, fn, recurse=True):
        self.model._apply(fn)
        self._image_digest = None  # a dtype cast changes the weights' bytes
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> FrozenCLIP:
        """The frozen model stays in eval mode whatever the caller asks."""
        super().train(mode)
        self.model.eval()
        return self

    # ----------------------------------------------------------------------------------------- properties
    @property
    def context_length(self) -> int:
        return self._text.owner.positional_embedding.shape[0]

    @property
    def width(self) -> int:
        """Dimension of token embeddings (the context vectors' dimension, ``ctx_dim``)."""
        return self._text.owner.token_embedding.weight.shape[1]

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text feature space."""
        return self.model.visual.output_dim

    @property
    def device(self) -> torch.device:
        return self._text.owner.token_embedding.weight.device

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learned temperature, already exponentiated (100 for OpenAI CLIP)."""
        return self.model.logit_scale.exp()

    def image_tower_digest(self) -> str:
        """A digest of everything that makes the image tower compute what it computes: its module structure
        (``repr``: layers, sizes, activation) and every weight and buffer (names, dtypes, shapes, bytes).

        Two random initialisations, another architecture, GELU instead of QuickGELU, or a fine-tuned checkpoint
        all give another digest. Hashed once per model instance (about 1 s for ViT-B/16's 86M weights).
        """
        if self._image_digest is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr(self.model.visual).encode())
            for name, tensor in sorted(self.model.visual.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
            self._image_digest = h.hexdigest()
        return self._image_digest

    # ------------------------------------------------------------------------------------------- encoders
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``(n, context_length)`` on the model's device."""
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts)).to(self.device)

    def n_tokens(self, text: str) -> int:
        """Number of BPE tokens of `text` (without start/end tokens)."""
        return len(self.tokenizer.encode(text))

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the token the text feature is read at, ``(n,)``."""
        if self._text.pool == "argmax":  # OpenAI BPE: EOT has the largest id
            return tokens.argmax(dim=-1)
        return (tokens == self._text.eos_id).int().argmax(dim=-1)

    @torch.no_grad()
    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings ``(n, context_length, width)``."""
        return self._text.owner.token_embedding(tokens.to(self.device))

    def encode_prompts(self, embeddings: torch.Tensor, eot_index: torch.Tensor,
                       deep: Sequence[torch.Tensor] | None = None, deep_start: int = 1,
                       shared_prefix: int = 0, sets: int = 1) -> torch.Tensor:
        """Text features of prompt embeddings, with the transformer run on the first ``max(eot)+1`` positions.

        Every projection and MLP runs on those positions only. The attention keeps the full key axis (the keys
        and values past them are zeros, which the causal mask weighs by exactly 0), so the CPU/GPU attention
        kernels reduce in the same order as open_clip's 77-token pass and the features are *bit-identical* to
        ``encode_text`` on the same tokens (tested), at about a third of the cost for short prompts.

        Args:
            embeddings: ``(n, L, width)`` token embeddings with learned vectors in place, ``L <= context_length``.
            eot_index: ``(n,)`` position of each prompt's end-of-text token.
            deep: deep prompts (IVLP, MaPLe, PromptSRC, deep language prompting): ``deep[j]`` ``(m, width)`` (or
                ``(n, m, width)``) replaces positions ``deep_start .. deep_start + m - 1`` at the input of block
                ``j + 1``, raw (no positional embedding), as the authors do; blocks after the last one carry the
                previous block's outputs at those positions. None or ``[]``: no deep prompts.
            deep_start: the first position the deep prompts replace (1: right after the start token).
            shared_prefix: with `shared_prefix_pass` on, the number of leading positions that are the same for every
                prompt of a set (the start token and a unified context: CoOp and its relatives, the text side of
                IVLP/MaPLe/PromptSRC). Attention is causal, so their hidden states are too: they are computed once
                per set, and every prompt's own positions attend to them. Equal to the full pass within float
                rounding (tested bound: 1e-5 relative); 0 or the option off: the bit-identical pass.
            sets: the prompts are ``sets`` groups of ``n / sets`` consecutive prompts, each group sharing its prefix.

        Returns:
            ``(n, embed_dim)`` unnormalised text features.
        """
        t = self._text.owner
        n_pos = self.context_length
        # BLAS takes another kernel (other rounding) for products of very few rows: keep >= MIN_ROWS in flight
        length = min(n_pos, max(int(eot_index.max()) + 1, -(-MIN_ROWS // embeddings.shape[0])))
        cast = t.transformer.get_cast_dtype()
        x = embeddings[:, :length].to(cast) + t.positional_embedding[:length].to(cast)
        deep = list(deep or [])
        if len(deep) >= len(t.transformer.resblocks):
            raise UserError(f"{len(deep)} deep text prompt layers for a text transformer of "
                            f"{len(t.transformer.resblocks)} blocks: the prompt depth is at most the block count")
        if deep and not self._text.blocks_known:
            raise UserError("deep text prompts need open_clip's standard text blocks; this model's are not")
        if deep and deep_start + max(p.shape[-2] for p in deep) > min(int(eot_index.min()), length):
            raise UserError("deep text prompts would overwrite a prompt's end-of-text token")
        if (self.shared_prefix_pass and self._text.blocks_known and 1 < shared_prefix < int(eot_index.min())
                and embeddings.shape[0] % sets == 0 and embeddings.shape[0] // sets > 1
                and all(deep_start + p.shape[-2] <= shared_prefix and p.dim() == 2 for p in deep)):
            length = int(eot_index.max()) + 1
            x = embeddings[:, :length].to(cast) + t.positional_embedding[:length].to(cast)
            x = self._shared_prefix_blocks(x, deep, deep_start, shared_prefix, sets, cast)
            return self.text_output(x, eot_index - shared_prefix)
        if self._text.blocks_known:
            mask = t.attn_mask[:length]  # (length, n_pos): row i sees keys 0..i
            for i, block in enumerate(t.transformer.resblocks):
                if 1 <= i <= len(deep):
                    x = _splice(x, deep[i - 1].to(cast), deep_start)
                x = self._maybe_checkpoint(_text_block, block, x, mask, n_pos)
        else:  # unknown block type: pad back to the full length (still exact, not faster)
            x = t.transformer(F.pad(x, (0, 0, 0, n_pos - length)), attn_mask=t.attn_mask)[:, :length]
        return self.text_output(x, eot_index)

    @property
    def text_tower(self) -> nn.Module:
        """The open_clip module holding the text transformer (the CLIP itself, or a CustomTextCLIP's ``text``):
        ``token_embedding``, ``positional_embedding``, ``transformer``, ``attn_mask``, ``ln_final``,
        ``text_projection``."""
        return self._text.owner

    def text_output(self, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """``ln_final``, the hidden state at each prompt's end-of-text position, the text projection."""
        t = self._text.owner
        x = t.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = t.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def _shared_prefix_blocks(self, x: torch.Tensor, deep: list[torch.Tensor], deep_start: int, prefix: int,
                              sets: int, cast: torch.dtype) -> torch.Tensor:
        """The text blocks with the first ``prefix`` positions computed once per set: returns the hidden states of
        the prompts' own positions ``(n, L - prefix, width)``."""
        n, length, width = x.shape
        per = n // sets
        xp = x.view(sets, per, length, width)[:, 0, :prefix]  # (S, P, w): the same for every prompt of a set
        xr = x[:, prefix:]  # (n, R, w)
        rows = torch.arange(length - prefix, device=x.device).view(-1, 1) + prefix
        mask = torch.arange(length, device=x.device).view(1, -1) <= rows  # (R, P + R): causal, absolute
        for i, block in enumerate(self._text.owner.transformer.resblocks):
            if 1 <= i <= len(deep):
                xp = _splice(xp, deep[i - 1].to(cast), deep_start)
            xp, xr = self._maybe_checkpoint(_shared_text_block, block, xp, xr, per, mask)
        return xr

    def _maybe_checkpoint(self, fn, *args):
        """``fn(*args)``, recomputed in backward instead of keeping its activations when ``text_checkpointing`` is
        on and gradients are being recorded (the same numbers, less memory, about one more forward pass)."""
        if self.text_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    @torch.no_grad()
    def encode_text(self, texts: str | Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Features of plain text prompts (e.g. hand-crafted templates), ``(n, embed_dim)``."""
        tokens = self.tokenize(texts)
        features = self.encode_prompts(self.token_embeddings(tokens), self.eot_index(tokens))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_images(self, images: torch.Tensor, normalize: bool = True,
                      prompts: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Image features ``(b, embed_dim)`` of preprocessed images ``(b, 3, H, W)``.

        Without ``prompts`` this is open_clip's ``encode_image`` under ``no_grad``. With visual prompts (VPT,
        IVLP, MaPLe, PromptSRC) the ViT runs step by step, as the authors place them: ``prompts[0]`` ``(m, width)``
        is appended after the patch tokens once the positional embedding is added (so it gets none) and before
        ``ln_pre``; ``prompts[j]`` replaces the last ``m`` tokens at the input of block ``j``, raw; the class
        token is pooled, so prompts are never removed. Gradients flow to the prompts through the frozen tower.
        ``prompts=[]`` (or zero-length prompts) gives ``encode_image``'s numbers exactly.
        """
        images = images.to(self.device)
        if prompts is None:
            with torch.no_grad():
                features = self.model.encode_image(images)
        else:
            features = self._prompted_image_pass(images, list(prompts))
        return F.normalize(features, dim=-1) if normalize else features

    def _prompted_image_pass(self, images: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
        v = _prompted_vit(self.model)
        if len(prompts) > len(v.transformer.resblocks):
            raise UserError(f"{len(prompts)} visual prompt layers for an image transformer of "
                            f"{len(v.transformer.resblocks)} blocks: the prompt depth is at most the block count")
        x = v.conv1(images.to(v.conv1.weight.dtype))  # (b, width, grid, grid)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (b, grid ** 2, width)
        x = torch.cat([v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = v.patch_dropout(x + v.positional_embedding.to(x.dtype))
        n = prompts[0].shape[-2] if prompts else 0
        if prompts:
            x = torch.cat([x, prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = v.ln_pre(x)
        if not v.transformer.batch_first:
            x = x.transpose(0, 1)
        for i, block in enumerate(v.transformer.resblocks):
            if 1 <= i < len(prompts):
                p = prompts[i]
                if p.shape[-2] != n:
                    raise UserError(f"visual prompts of layer {i} have {p.shape[-2]} tokens, layer 0 has {n}")
                if v.transformer.batch_first:
                    x = torch.cat([x[:, : x.shape[1] - n], p.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
                else:
                    x = torch.cat([x[: x.shape[0] - n], p.to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)])
            x = block(x)
        if not v.transformer.batch_first:
            x = x.transpose(0, 1)
        pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled

    @property
    def text_blocks(self) -> int:
        """Residual blocks of the text transformer (the deepest text prompt depth)."""
        return len(self._text.owner.transformer.resblocks)

    @property
    def vision_blocks(self) -> int:
        """Residual blocks of the ViT image transformer (the deepest visual prompt depth)."""
        return len(_prompted_vit(self.model).transformer.resblocks)

    @property
    def vision_width(self) -> int:
        """Width of the image transformer's tokens (the visual prompts' dimension)."""
        return _prompted_vit(self.model).class_embedding.shape[-1]


def _splice(x: torch.Tensor, prompt: torch.Tensor, start: int) -> torch.Tensor:
    """``x`` ``(n, L, d)`` with positions ``start .. start + m - 1`` replaced by ``prompt`` ``(m, d)`` or
    ``(n, m, d)`` (the same prompt for every sequence, or one per sequence)."""
    m = prompt.shape[-2]
    prompt = prompt.expand(x.shape[0], -1, -1) if prompt.dim() == 2 else prompt
    return torch.cat([x[:, :start], prompt, x[:, start + m:]], dim=1)


def _prompted_vit(model: nn.Module) -> nn.Module:
    """The model's open_clip VisionTransformer, if visual prompts can be placed in it (class-token pooling, no
    attention pooling); a clear error otherwise (ResNet towers, timm towers, average pooling)."""
    v = getattr(model, "visual", None)
    kind = type(v).__name__
    if not isinstance(v, VisionTransformer):
        raise UserError(f"visual prompts need a ViT image tower; this model's is {kind} (a ResNet or timm tower "
                        "cannot take prompt tokens): choose a ViT model, e.g. model=vit_b16")
    if v.attn_pool is not None or v.pool_type != "tok" or v.final_ln_after_pool:
        raise UserError(f"visual prompts need class-token pooling; this ViT pools with pool_type={v.pool_type!r}"
                        f"{' and attention pooling' if v.attn_pool is not None else ''}")
    return v


def _text_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor, n_pos: int) -> torch.Tensor:
    """One standard open_clip text block on truncated positions (see `_attention`)."""
    x = x + block.ls_1(_attention(block.attn, block.ln_1(x), mask, n_pos))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _shared_text_block(block: nn.Module, xp: torch.Tensor, xr: torch.Tensor, per: int, mask: torch.Tensor):
    """One text block over a shared prefix ``xp`` and the prompts' own positions ``xr``."""
    ap, ar = _shared_attention(block.attn, block.ln_1(xp), block.ln_1(xr), per, mask)
    xp, xr = xp + block.ls_1(ap), xr + block.ls_1(ar)
    return xp + block.ls_2(block.mlp(block.ln_2(xp))), xr + block.ls_2(block.mlp(block.ln_2(xr)))


def _shared_attention(mha: nn.MultiheadAttention, hp: torch.Tensor, hr: torch.Tensor, per: int,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal self-attention of a shared prefix ``hp`` ``(S, P, d)`` and of each prompt's own positions ``hr``
    ``(S * per, R, d)``, which attend to their set's prefix keys and to their own keys (``mask`` ``(R, P + R)``)."""
    sets, p, d = hp.shape
    heads = mha.num_heads

    def split(z: torch.Tensor) -> torch.Tensor:  # (..., L, d) -> (..., heads, L, d / heads)
        return z.unflatten(-1, (heads, d // heads)).transpose(-3, -2)

    qp, kp, vp = (split(z) for z in F.linear(hp, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1))
    qr, kr, vr = (split(z) for z in F.linear(hr, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1))
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)  # (S, heads, P, dh)

    def with_prefix(zp: torch.Tensor, zr: torch.Tensor) -> torch.Tensor:  # prefix keys of the prompt's set first
        zp = zp.unsqueeze(1).expand(-1, per, -1, -1, -1).flatten(0, 1)  # (S * per, heads, P, dh)
        return torch.cat([zp, zr], dim=2)

    out_r = F.scaled_dot_product_attention(qr, with_prefix(kp, kr), with_prefix(vp, vr), attn_mask=mask)

    def merge(z: torch.Tensor) -> torch.Tensor:
        return F.linear(z.transpose(-3, -2).flatten(-2), mha.out_proj.weight, mha.out_proj.bias)

    return merge(out_p), merge(out_r)


def _attention(mha: nn.MultiheadAttention, h: torch.Tensor, mask: torch.Tensor, n_keys: int) -> torch.Tensor:
    """``mha``'s self-attention for queries ``h`` ``(n, L, d)``, keys/values zero-padded to ``n_keys``.

    The ops follow ``F.multi_head_attention_forward`` step by step, in its sequence-first layout, so that each
    matrix product has the same memory layout, and hence the same rounding, as in open_clip's own pass.
    """
    n, length, d = h.shape
    heads = mha.num_heads
    proj = F.linear(h.transpose(0, 1), mha.in_proj_weight, mha.in_proj_bias)  # (L, n, 3d)
    q, k, v = proj.unflatten(-1, (3, d)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
    k, v = (F.pad(z, (0, 0, 0, 0, 0, n_keys - length)) for z in (k, v))  # (n_keys, n, d), zeros past L
    q, k, v = (z.view(z.shape[0], n * heads, -1).transpose(0, 1) for z in (q, k, v))
    q, k, v = (z.view(n, heads, z.shape[1], -1) for z in (q, k, v))  # (n, heads, len, d/heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype)[None, None])
    out = out.permute(2, 0, 1, 3).contiguous().view(length * n, d)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias).view(length, n, d).transpose(0, 1)


def _create(name: str, tag: str | None, quick_gelu: bool, cache_dir: str | None) -> nn.Module:
    """``open_clip.create_model``, with a failed download turned into one line saying what to do."""
    disabled = logging.root.manager.disable
    logging.disable(logging.ERROR)  # the hub's retry chatter and open_clip's own error log: reported below
    try:
        return open_clip.create_model(name, pretrained=tag, force_quick_gelu=quick_gelu, cache_dir=cache_dir)
    except (RuntimeError, OSError, ValueError) as e:
        if not tag:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = first if len(first) <= 160 else first[:157] + "..."
        raise UserError(
            f"cannot load the weights of model {name}, pretrained tag {tag!r}: they are not in the local cache "
            f"and the download failed ({first}). Without internet: download them where you have it and pass "
            f"model.pretrained=/path/to/file, or copy the weights cache ({weights_cache_hint(cache_dir)}) here"
        ) from e
    finally:
        logging.disable(disabled)


def weights_cache_hint(cache_dir: str | None) -> str:
    """Where open_clip looks for downloaded weights."""
    if cache_dir:
        return str(cache_dir)
    return "the Hugging Face hub cache, ~/.cache/huggingface/hub, or $HF_HOME"


def weights_status(name: str, pretrained: str | None, arch: Any = None, cache_dir: str | None = None) -> str:
    """``random``, ``file`` (a local checkpoint), ``cached`` (a tag whose weights are on disk), ``download``
    (a tag that needs the network), or ``missing: ...`` (a file that does not exist). Never downloads."""
    if not pretrained:
        return "random"
    if os.path.isfile(str(pretrained)):
        return "file"
    if arch is not None:
        return f"missing: no file {pretrained}"
    cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
    if not cfg:
        return f"missing: {pretrained!r} is neither a tag of {name} nor a file"
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        # open_clip's convention: "org/model/" means its default file names, "org/model/file.pt" one file
        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fname in names:
            found = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return "cached"
    url = cfg.get("url", "")
    if url and os.path.isfile(os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))):
        return "cached"
    return "download"


OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI's checkpoints only


def _quick_gelu_setting(value: bool | str) -> bool | None:
    """``model.quick_gelu``: None for ``auto``, else the forced choice."""
    if isinstance(value, bool):
        return value
    choice = {"auto": None, "true": True, "false": False}.get(str(value).lower(), "?")
    if choice == "?":
        raise UserError(f"model.quick_gelu={value!r}: choose auto, true or false")
    return choice


def _is_torchscript(path: str | os.PathLike) -> bool:
    """A TorchScript archive (OpenAI released CLIP as these): a zip holding ``code/`` and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def read_checkpoint(path: str | os.PathLike) -> tuple[dict | None, bool]:
    """A local weight file's state dict and whether it is in OpenAI's format (a TorchScript archive, or a
    state dict carrying OpenAI's ``input_resolution``/``context_length``/``vocab_size`` entries).

    Pickled checkpoints load with ``weights_only=True``. Formats open_clip reads itself (``.safetensors``,
    ``.npz``) give ``(None, False)`` and are left to `open_clip.load_checkpoint`.
    """
    path = str(path)
    if Path(path).suffix in (".safetensors", ".npz", ".npy"):
        return None, False
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():  # torch deprecates jit.load; OpenAI's files need it all the same
                warnings.simplefilter("ignore", FutureWarning)
                state, openai = dict(torch.jit.load(path, map_location="cpu").state_dict()), True
        else:
            try:  # memory-mapped: reading the keys costs nothing when open_clip loads the file itself below
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
            state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
            if not isinstance(state, dict):
                raise UserError(f"model.pretrained={path!r} holds no state dict (a {type(state).__name__})")
            openai = any(k in state for k in OPENAI_EXTRA_KEYS)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file ends in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"model.pretrained={path!r} cannot be read as a checkpoint: {first}") from e
    if state and next(iter(state)).startswith("module."):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, openai


def _load_weights(model: nn.Module, state: dict | None, openai_format: bool, path: str) -> None:
    """Load a local checkpoint strictly: OpenAI's format here (their extra entries and saved non-persistent
    buffers dropped), anything else through open_clip's converters."""
    try:
        if not openai_format:
            open_clip.load_checkpoint(model, path)
            return
        persistent = model.state_dict()
        buffers = {name for name, _ in model.named_buffers()}
        state = {k: v for k, v in state.items()
                 if k not in OPENAI_EXTRA_KEYS and not (k in buffers and k not in persistent)}
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise UserError(f"model.pretrained={path!r} does not fit the architecture {type(model).__name__} "
                        f"of model.name / model.arch: {detail}") from e


def _read_arch(arch: dict | str | Any) -> dict:
    """An architecture config as a plain dict, from a dict(-like) or a JSON file."""
    if isinstance(arch, str | Path):
        path = Path(arch)
        if not path.is_file():
            raise UserError(f"model.arch={str(arch)!r}: no such JSON file")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"model.arch file {path} is not valid JSON: {e}") from e
    if isinstance(arch, DictConfig):
        return OmegaConf.to_container(arch, resolve=True)
    return copy.deepcopy(dict(arch))
