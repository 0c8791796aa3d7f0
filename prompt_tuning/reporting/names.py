"""Names and order of methods and datasets in tables and figures: the papers' spelling and the papers' order.

Methods come zero-shot CLIP first, then roughly in the order they were published; datasets in CoOp's order of the
eleven benchmarks, then the ImageNet variants. Names this module does not know keep their config name and come
after the known ones. An experiment's ``display:`` map overrides any name (methods, variants and datasets).
"""

from __future__ import annotations

import re

METHODS = {  # config name -> the papers' spelling, in table order
    "zeroshot": "Zero-shot CLIP", "linear_probe": "Linear probe CLIP", "coop": "CoOp", "coop_csc": "CoOp (CSC)",
    "cocoop": "CoCoOp", "clip_adapter": "CLIP-Adapter", "tip_adapter": "Tip-Adapter", "tip_adapter_f": "Tip-Adapter-F",
    "prograd": "ProGrad", "kgcoop": "KgCoOp", "bayesian": "BPL", "bayesian_conditional": "BPL (conditional)",
    "eco": "ECO", "deep_language": "Deep language prompts", "vpt_deep": "VPT-deep", "ivlp": "IVLP", "maple": "MaPLe",
    "promptsrc": "PromptSRC",
}
TRAINS_NOTHING = ("zeroshot",)  # one row without shots in a table, whether or not its runs exist yet

DATASETS = {  # config name -> display name, in CoOp's order, then the ImageNet variants
    "imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "Oxford Pets", "stanford_cars": "Stanford Cars",
    "oxford_flowers": "Flowers102", "food101": "Food101", "fgvc_aircraft": "FGVC Aircraft", "sun397": "SUN397",
    "dtd": "DTD", "eurosat": "EuroSAT", "ucf101": "UCF101", "imagenetv2": "ImageNet-V2",
    "imagenet_sketch": "ImageNet-Sketch", "imagenet_a": "ImageNet-A", "imagenet_r": "ImageNet-R", "shapes": "Shapes",
}


def natural(text: str) -> tuple:
    """A sort key that orders numbers by value: ``n_ctx=4`` before ``n_ctx=16``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def method_name(label: str, display: dict | None = None) -> str:
    """``coop[n_ctx=4]`` -> ``CoOp (n_ctx=4)``; an entry of ``display`` for the full label or the method wins."""
    display = {**METHODS, **(display or {})}
    if label in display:
        return str(display[label])
    method, _, variant = label.partition("[")
    name = str(display.get(method, method))
    return f"{name} ({variant.rstrip(']').replace(',', ', ')})" if variant else name


def dataset_name(dataset: str, display: dict | None = None) -> str:
    """``fgvc_aircraft`` -> ``FGVC Aircraft``; ``display`` wins; an unknown dataset keeps its name."""
    return str({**DATASETS, **(display or {})}.get(dataset, dataset))


def method_order(label: str) -> tuple:
    """Sort key of a method label: the known methods in table order, variants after their method by value."""
    method, _, variant = label.partition("[")
    known = list(METHODS)
    return (known.index(method) if method in known else len(known), natural(method), natural(variant))


def dataset_order(dataset: str) -> tuple:
    known = list(DATASETS)
    return (known.index(dataset) if dataset in known else len(known), natural(dataset))


def ordered_datasets(datasets) -> list[str]:
    """``datasets`` (any iterable, repeats allowed) in the papers' order."""
    return sorted(set(datasets), key=dataset_order)


def key_order(key: tuple[str, int | None]) -> tuple:
    """Sort key of a ``(method, shots)`` table key: methods that train nothing first, then table order, shots."""
    method, shots = key
    return (shots is not None, method_order(method), shots or 0)
