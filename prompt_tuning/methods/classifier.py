"""The one zero-shot classifier helper: class weights from hand-crafted templates, as CLIP ensembles them.

Heads score against it (CLIP-Adapter, Tip-Adapter), objectives hold their frozen targets with it (KgCoOp, ProGrad,
PromptSRC), a context with no text prompts classifies with it (VPT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from prompt_tuning.backbone import FrozenCLIP


def check_templates(templates: str | Sequence[str] | None) -> list[str] | None:
    """Templates as a list (one string is one template), each with a ``{}`` for the class name; None stays None."""
    if templates is None:
        return None
    templates = [templates] if isinstance(templates, str) else list(templates)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"templates={templates!r}: each template needs a {{}} where the class name goes")
    return templates


@torch.no_grad()
def zero_shot_classifier(clip: FrozenCLIP, classnames: Sequence[str], templates: str | Sequence[str],
                         mean: Literal["normalised", "raw"] = "normalised") -> torch.Tensor:
    """Zero-shot CLIP's class weights ``(C, d)``, normalised, from one or more templates (underscores in class
    names read as spaces; one text pass of C prompts per template).

    Args:
        mean: how templates combine: ``normalised`` (CLIP's prompt ensembling: each template's features
            normalised, averaged, normalised again; with one template, its normalised features) or ``raw``
            (PromptSRC's frozen targets: the mean of the unnormalised features, then normalised).
    """
    templates = check_templates(templates)
    names = [name.replace("_", " ") for name in classnames]
    per_template = torch.stack([clip.encode_text([t.replace("{}", n) for n in names], normalize=False)
                                for t in templates], dim=1)  # (C, T, d), unnormalised
    if mean == "raw":
        return F.normalize(per_template.mean(dim=1), dim=-1)
    features = F.normalize(per_template, dim=-1)
    return features[:, 0] if len(templates) == 1 else F.normalize(features.mean(dim=1), dim=-1)
