"""FrozenCLIP: a frozen open_clip model whose text pass takes prompt *embeddings*, with hook points in both towers.

Prompt learning (CoOp, arXiv:2109.01134, and its successors) replaces some token embeddings of a prompt with
learned vectors, so the text encoder must start from embeddings rather than token ids. `encode_prompts` does
that, and runs the causal text transformer only up to the last end-of-text (EOT) position of the batch (the same
features as open_clip's own 77-token `encode_text`, for a fraction of the cost; `prompt_tuning.backbone.text`).
A method changes a pass through a `Hook` (`prompt_tuning.backbone.hooks`); the backbone never learns which method
called it, and with no hook both passes equal open_clip's.

The open_clip model is held *outside* the module tree: it never appears in `state_dict()` or `parameters()`
(checkpoints hold only what a method learns), it follows `.to(device)` / dtype casts, and it stays in eval mode
when Lightning calls `.train()`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from prompt_tuning.backbone import text as passes
from prompt_tuning.backbone.hooks import Hook, Layout
from prompt_tuning.backbone.loading import Preprocess, load_open_clip
from prompt_tuning.core.errors import UserError

SUPPORTED_POOLING = ("argmax", "eos")


@dataclass(frozen=True)
class TextPassOptions:
    """How the text pass runs; none of them changes a number beyond float rounding.

    Attributes:
        shared_prefix: compute the positions every class of a prompt set shares once per set (``model.shared_prefix``;
            equal to the full pass within float rounding; off: bit-identical to open_clip).
        checkpointing: recompute the text blocks in backward instead of keeping their activations
            (``runtime.text_checkpointing``).
        chunk: with gradients, run this many classes of a prompt set at a time, each chunk recomputed in backward
            (``runtime.text_chunk``; 0: all at once).
    """

    shared_prefix: bool = False
    checkpointing: bool = False
    chunk: int = 0


class TextTower:
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
        # blocks whose attention the passes can run themselves (open_clip's standard block)
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
    `encode_prompts` and a hooked `encode_images` to what a method learns.

    Args:
        model: an open_clip `CLIP` (or `CustomTextCLIP` with a `TextTransformer`).
        tokenizer: the matching open_clip tokenizer.
        preprocess: image size and normalisation the model expects.
        name: architecture name, for cache keys and results.
        weights: identity of the weights (pretrained tag, checkpoint path, or ``random``).
        options: how the text pass runs (`TextPassOptions`); `with_options` gives a copy with others.
    """

    def __init__(self, model: nn.Module, tokenizer, preprocess: Preprocess, name: str, weights: str,
                 options: TextPassOptions = TextPassOptions()):
        super().__init__()
        model.eval().requires_grad_(False)
        object.__setattr__(self, "model", model)  # deliberately not a registered submodule (see module doc)
        self._text = TextTower(model)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.weights = weights
        self.options = options
        self._image_digest: str | None = None

    @classmethod
    def build(cls, name: str = "ViT-B-16", pretrained: str | None = "openai", arch: dict | str | None = None,
              cache_dir: str | None = None, quick_gelu: bool | str = "auto",
              options: TextPassOptions = TextPassOptions(), allow_torchscript: bool = False) -> FrozenCLIP:
        """Build from an open_clip architecture name, a pretrained tag or local checkpoint, or a config dict
        (`prompt_tuning.backbone.loading.load_open_clip` says how each is read)."""
        loaded = load_open_clip(name, pretrained, arch, cache_dir, quick_gelu, allow_torchscript)
        return cls(loaded.model, loaded.tokenizer, loaded.preprocess, loaded.name, loaded.weights, options)

    def with_options(self, **changes) -> FrozenCLIP:
        """The same frozen model (shared, not copied) with other `TextPassOptions`."""
        other = FrozenCLIP(self.model, self.tokenizer, self.preprocess, self.name, self.weights,
                           dataclasses.replace(self.options, **changes))
        other._image_digest = self._image_digest
        return other

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
    def text_tower(self) -> nn.Module:
        """The open_clip module holding the text transformer (the CLIP itself, or a CustomTextCLIP's ``text``):
        ``token_embedding``, ``positional_embedding``, ``transformer``, ``attn_mask``, ``ln_final``,
        ``text_projection``."""
        return self._text.owner

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

    @property
    def text_blocks(self) -> int:
        """Residual blocks of the text transformer (the deepest text prompt depth)."""
        return len(self._text.owner.transformer.resblocks)

    @property
    def vision_blocks(self) -> int:
        """Residual blocks of the ViT image transformer (the deepest visual prompt depth)."""
        return len(hookable_vit(self.model).transformer.resblocks)

    @property
    def vision_width(self) -> int:
        """Width of the image transformer's tokens (the visual prompts' dimension)."""
        return hookable_vit(self.model).class_embedding.shape[-1]

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

    # ---------------------------------------------------------------------------------------------- tokens
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``(n, context_length)`` on the model's device; a text longer than the text encoder takes is
        an error (open_clip would cut it silently, and classes whose names fall past the cut would get the same
        features)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = self.tokenizer(texts)
        for i in torch.nonzero(tokens[:, -1] != 0).flatten().tolist():  # rows that fill every position
            n = len(self.tokenizer.encode(texts[i])) + 2  # with the start and end tokens
            if n > self.context_length:
                shown = texts[i] if len(texts[i]) <= 80 else texts[i][:77] + "..."
                raise UserError(f"the prompt {shown!r} is {n} tokens long; the text encoder of {self.name} takes "
                                f"{self.context_length}: use fewer context vectors (n_ctx), a shorter template or "
                                "shorter class names")
        return tokens.to(self.device)

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

    # ------------------------------------------------------------------------------------------ text pass
    def encode_prompts(self, embeddings: torch.Tensor, eot_index: torch.Tensor, hook: Hook | None = None,
                       shared_prefix: int = 0) -> torch.Tensor:
        """Unnormalised text features of prompt embeddings, the transformer run on the first ``max(eot)+1``
        positions (bit-identical to ``encode_text`` on the same tokens; see `prompt_tuning.backbone.text`).

        Args:
            embeddings: ``(n, L, width)`` prompts, or ``(S, C, L, width)``: S prompt sets of C classes each, with
                ``L <= context_length`` (positions past the last EOT may be cut off).
            eot_index: ``(n,)`` or ``(C,)`` position of each prompt's end-of-text token.
            hook: the method's changes to the pass (`Hook`), applied at every block.
            shared_prefix: leading positions that every class of a set shares (start token and a unified
                context); with ``options.shared_prefix`` and a hook that allows it (``class_uniform``) they are
                computed once per set. 0: none.

        Returns:
            ``(n, embed_dim)``, or ``(S, C, embed_dim)``.
        """
        if embeddings.dim() == 3:
            return self._encode_sets(embeddings.unsqueeze(0), eot_index, hook, shared_prefix, 0)[0]
        sets, classes = embeddings.shape[:2]
        chunk = self.options.chunk
        if not (chunk and classes > chunk and torch.is_grad_enabled()):
            return self._encode_sets(embeddings, eot_index, hook, shared_prefix, 0)
        return torch.cat([  # one chunk of classes' activations kept at a time
            torch.utils.checkpoint.checkpoint(self._encode_sets, embeddings[:, i:i + chunk], eot_index[i:i + chunk],
                                              hook, shared_prefix, i, use_reentrant=False)
            for i in range(0, classes, chunk)], dim=1)

    def _encode_sets(self, embeddings: torch.Tensor, eot_index: torch.Tensor, hook: Hook | None,
                     shared_prefix: int, first_class: int) -> torch.Tensor:
        """`encode_prompts` of ``(S, C, L, width)`` prompts whose first class is class ``first_class`` of the task."""
        t, hook = self._text.owner, hook or Hook()
        sets, classes, _, width = embeddings.shape
        n, n_pos = sets * classes, self.context_length
        eot = eot_index.repeat(sets)
        # BLAS takes another kernel (other rounding) for products of very few rows: keep >= MIN_ROWS in flight
        length = min(n_pos, max(int(eot.max()) + 1, -(-passes.MIN_ROWS // n))) if hook.causal else n_pos
        cast = t.transformer.get_cast_dtype()
        x = _positions(embeddings.reshape(n, -1, width), length).to(cast) + t.positional_embedding[:length].to(cast)
        if not self._text.blocks_known:
            if type(hook) is not Hook:
                raise UserError("this model's text blocks are not open_clip's standard ones, so a method cannot "
                                "change its text pass (deep prompts, adapters, low-rank updates)")
            x = t.transformer(F.pad(x, (0, 0, 0, n_pos - length)), attn_mask=t.attn_mask)[:, :length]  # exact
            return self.text_output(x, eot).view(sets, classes, -1)
        layout = Layout("text", self.text_blocks, classes=classes, eot_index=eot_index, class_offset=first_class)
        if (self.options.shared_prefix and hook.class_uniform and hook.causal and classes > 1
                and 1 < shared_prefix < int(eot.min())):
            xr = self._shared_prefix_blocks(x[:, :int(eot.max()) + 1], hook, shared_prefix, sets, layout)
            return self.text_output(xr, eot - shared_prefix).view(sets, classes, -1)
        mask = t.attn_mask[:length]  # (length, n_pos): row i sees keys 0..i
        x = hook.start(x, layout)
        for i, block in enumerate(t.transformer.resblocks):
            x = hook.before_block(i, x, layout)
            w = hook.attention(i, passes.projections(block))
            x = self._maybe_checkpoint(passes.block_pass, block, x, mask, n_pos, w)
            x = hook.after_block(i, x, layout)
        return self.text_output(x, eot).view(sets, classes, -1)

    def _shared_prefix_blocks(self, x: torch.Tensor, hook: Hook, prefix: int, sets: int,
                              layout: Layout) -> torch.Tensor:
        """The text blocks with the first ``prefix`` positions computed once per set: returns the hidden states of
        the prompts' own positions ``(n, L - prefix, width)``."""
        n, length, width = x.shape
        classes = layout.classes
        shared, own = dataclasses.replace(layout, shared=True), dataclasses.replace(layout, start=prefix)
        xp = x.view(sets, classes, length, width)[:, 0, :prefix]  # (S, P, w): the same for every class of a set
        xr = x[:, prefix:]  # (n, R, w)
        xp, xr = hook.start(xp, shared), hook.start(xr, own)
        rows = torch.arange(length - prefix, device=x.device).view(-1, 1) + prefix
        mask = torch.arange(length, device=x.device).view(1, -1) <= rows  # (R, P + R): causal, absolute
        for i, block in enumerate(self._text.owner.transformer.resblocks):
            xp, xr = hook.before_block(i, xp, shared), hook.before_block(i, xr, own)
            w = hook.attention(i, passes.projections(block))
            xp, xr = self._maybe_checkpoint(passes.shared_block_pass, block, xp, xr, classes, mask, w)
            xp, xr = hook.after_block(i, xp, shared), hook.after_block(i, xr, own)
        return xr

    def text_output(self, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """``ln_final``, the hidden state at each prompt's end-of-text position, the text projection."""
        t = self._text.owner
        x = t.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = t.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def _maybe_checkpoint(self, fn, *args):
        """``fn(*args)``, recomputed in backward instead of keeping its activations with ``options.checkpointing``
        while gradients are recorded (the same numbers, less memory, about one more forward pass)."""
        if self.options.checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    @torch.no_grad()
    def encode_text(self, texts: str | Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Features of plain text prompts (e.g. hand-crafted templates), ``(n, embed_dim)``."""
        tokens = self.tokenize(texts)
        features = self.encode_prompts(self.token_embeddings(tokens), self.eot_index(tokens))
        return F.normalize(features, dim=-1) if normalize else features

    # ----------------------------------------------------------------------------------------- image pass
    def encode_images(self, images: torch.Tensor, normalize: bool = True, hook: Hook | None = None) -> torch.Tensor:
        """Image features ``(b, embed_dim)`` of preprocessed images ``(b, 3, H, W)``.

        Without a hook this is open_clip's ``encode_image`` under ``no_grad``. With one, the ViT runs step by step
        and calls it at each hook point (`prompt_tuning.backbone.hooks`); the class token is pooled, so tokens a
        hook appends are never pooled. Gradients flow to what the hook learns through the frozen tower; a hook
        that changes nothing gives ``encode_image``'s numbers exactly.
        """
        images = images.to(self.device)
        if hook is None:
            with torch.no_grad():
                features = self.model.encode_image(images)
        else:
            features = self._hooked_image_pass(images, hook)
        return F.normalize(features, dim=-1) if normalize else features

    def _hooked_image_pass(self, images: torch.Tensor, hook: Hook) -> torch.Tensor:
        v = hookable_vit(self.model)
        x = v.conv1(images.to(v.conv1.weight.dtype))  # (b, width, grid, grid)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (b, grid ** 2, width)
        layout = Layout("image", len(v.transformer.resblocks), patches=x.shape[1])
        x = torch.cat([v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = v.patch_dropout(x + v.positional_embedding.to(x.dtype))
        x = v.ln_pre(hook.start(x, layout))
        for i, block in enumerate(v.transformer.resblocks):
            x = hook.before_block(i, x, layout)
            standard = type(block) is ResidualAttentionBlock and isinstance(block.attn, nn.MultiheadAttention)
            if not standard and type(hook).attention is not Hook.attention:
                raise UserError(f"image block {i} of {self.name} is not open_clip's standard block: its attention "
                                "projections cannot be changed by a hook")
            base = passes.projections(block) if standard else None
            w = hook.attention(i, base) if standard else None
            if w is base:  # open_clip's own block
                x = block(x) if v.transformer.batch_first else block(x.transpose(0, 1)).transpose(0, 1)
            else:
                x = passes.block_pass(block, x, None, x.shape[1], w)
            x = hook.after_block(i, x, layout)
        pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled


def _positions(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x`` ``(n, L, w)`` cut or zero-padded to ``length`` positions (positions past every EOT never reach a
    feature: the transformer is causal)."""
    return x[:, :length] if x.shape[1] >= length else F.pad(x, (0, 0, 0, length - x.shape[1]))


def hookable_vit(model: nn.Module) -> nn.Module:
    """The model's open_clip VisionTransformer, if a hook can run in it (class-token pooling, no attention
    pooling); a clear error otherwise (ResNet towers, timm towers, average pooling)."""
    v = getattr(model, "visual", None)
    kind = type(v).__name__
    if not isinstance(v, VisionTransformer):
        raise UserError(f"visual prompts and image-tower hooks need a ViT image tower; this model's is {kind} (a "
                        "ResNet or timm tower cannot take prompt tokens): choose a ViT model, e.g. model=vit_b16")
    if v.attn_pool is not None or v.pool_type != "tok" or v.final_ln_after_pool:
        raise UserError(f"visual prompts need class-token pooling; this ViT pools with pool_type={v.pool_type!r}"
                        f"{' and attention pooling' if v.attn_pool is not None else ''}")
    return v
