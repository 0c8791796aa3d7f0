"""The authors' path of a CoOp-style method, for the benches: prompts at all 77 positions, run through open_clip's
own text transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.methods.base import Task
from prompt_tuning.methods.frame import PromptFrame


def reference_text_features(clip: FrozenCLIP, embeddings77: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The reference TextEncoder: all 77 positions through open_clip's own transformer (the text tower of a
    CLIP or of a CustomTextCLIP)."""
    m = clip.text_tower
    x = embeddings77 + m.positional_embedding
    x = m.transformer(x, attn_mask=m.attn_mask)
    return F.normalize(clip.text_output(x, eot), dim=-1)


def reference_frame(clip: FrozenCLIP, context, task: Task) -> PromptFrame:
    """The context's prompt frame at all 77 positions (the authors' prompts), for the reference path."""
    source = context.frame
    frame = PromptFrame(source.prefix_text, source.n_ctx, source.position, full_length=True).to(clip.device)
    frame.set_task(clip, task)
    return frame
