"""`prompt-tuning export RUN --out head.safetensors`: a learned classifier that works without this package.

For a context whose class weights do not depend on the image and draw nothing at random (CoOp, KgCoOp, ProGrad,
ECO, zero-shot), the learned prompts *are* a linear classifier on CLIP's normalised image features: the
normalised class text features ``W`` ``(C, d)`` and the logit scale, ``logits = scale * normalize(f) @ W.T``.
The file holds those, the class names, the model name and its weights identity, and the architecture as it ran
(open_clip's model config dict, QuickGELU included, and the image preprocessing), so open_clip alone can rebuild
any model, a built-in name or an architecture of one's own (random weights: from the seed they were drawn with;
see the README). It is a safetensors file: tensors and text, no code. For conditional or stochastic contexts
(CoCoOp, Bayesian prompts) the class weights change per image or per draw: the file then holds the learned tensors
themselves, with a note that they need this toolkit. `load_head` reads either kind back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch

from prompt_tuning.core.errors import UserError
from prompt_tuning.core.files import atomic_path

FORMAT = "prompt-tuning-head/1"


@dataclass
class ExportedHead:
    """An exported classifier: ``classnames``, normalised ``text_features`` ``(C, d)`` (None when the method
    needs the toolkit), ``logit_scale``, the model it belongs to, and everything else in ``meta``."""

    classnames: list[str]
    text_features: torch.Tensor | None
    logit_scale: float
    model: str
    pretrained: str | None
    meta: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` logits of image features ``(B, d)`` (normalised here)."""
        if self.text_features is None:
            raise UserError(f"this head ({self.meta.get('method')}) holds learned tensors, not class weights: "
                            "its classes depend on the image or on random draws; use prompt-tuning eval")
        f = torch.nn.functional.normalize(image_features.float(), dim=-1)
        return self.logit_scale * f @ self.text_features.T


def export_head(run_dir: str | Path, out: str | Path, classes_file: str | Path | None = None,
                checkpoint: str | Path | None = None) -> ExportedHead:
    """Write the head of a finished run to ``out`` (safetensors) and return it.

    Args:
        run_dir: a run folder (config.yaml and checkpoints/last.ckpt).
        out: the ``.safetensors`` file to write.
        classes_file: class names, one per line, to build the head for (a unified context transfers to any
            class set); default: the classes the run was trained on.
        checkpoint: another checkpoint than the run's last one.
    """
    from safetensors.torch import save_file

    if Path(out).is_dir():
        raise UserError(f"--out {out} is a folder: give the .safetensors file to write")

    from prompt_tuning.config.instantiate import instantiate
    from prompt_tuning.data.datasets import Dataset, classnames_of
    from prompt_tuning.methods.base import Task
    from prompt_tuning.runs.build import build_clip, make_module, subset_names
    from prompt_tuning.runs.folder import RunFolder
    from prompt_tuning.runs.runner import load_method_state

    folder = RunFolder(run_dir)
    cfg = folder.config()
    dataset = instantiate(cfg.dataset, Dataset, "dataset.class_path")
    if classes_file is not None:
        path = Path(classes_file)
        if not path.is_file():
            raise UserError(f"--classes {path}: no such file (give one class name per line)")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise UserError(f"--classes {path}: the file names no class")
    else:
        splits = dataset.load()
        names = subset_names(classnames_of(splits["train"] + splits["val"] + splits["test"], dataset.name),
                       cfg.protocol.subsample)
    task = Task(tuple(names), dataset.template)
    clip = build_clip(cfg)
    module = make_module(cfg, clip, task)
    method = module.method
    if method.export_kind is None and method.capabilities.image_tower:
        raise UserError(f"method {cfg.method.name} prompts the image tower too, so class text features alone would "
                        "classify with the wrong image features; evaluate it with `prompt-tuning eval RUN`")
    if method.export_kind is None:
        raise UserError(f"method {cfg.method.name} scores image features with its own head (not class text "
                        "features), so it has nothing to export; evaluate it with `prompt-tuning eval RUN`")
    if module.trainable:
        load_method_state(module, checkpoint or folder.last_checkpoint)
    module.eval()
    portable = method.export_kind == "class_weights"
    meta = {
        "format": FORMAT,
        "method": str(cfg.method.name),
        "model": str(cfg.model.name),
        "pretrained": str(cfg.model.pretrained) if cfg.model.pretrained else "",
        "weights": clip.weights,
        "image_tower_digest": clip.image_tower_digest(),
        "open_clip_model": _open_clip_name(clip),
        "open_clip_config": json.dumps(_open_clip_config(cfg, clip), sort_keys=True),  # open_clip.CLIP(**config)
        "preprocess": json.dumps({"image_size": clip.preprocess.image_size, "mean": list(clip.preprocess.mean),
                                  "std": list(clip.preprocess.std), "interpolation": clip.preprocess.interpolation}),
        "init_seed": str(int(cfg.seed)),  # the torch seed random weights were drawn with (pretrained: unused)
        "classnames": json.dumps(list(names)),
        "template": task.template,
        "run_hash": folder.saved_hash() or "",
        "kind": "class_text_features" if portable else "learned_tensors",
        "note": ("logits = logit_scale * normalize(image_features) @ text_features.T" if portable else
                 "conditional or stochastic prompts: the classes depend on the image or on random draws, so "
                 "these tensors need prompt-tuning (prompt-tuning eval) to classify"),
    }
    scale = torch.tensor(float(clip.logit_scale))
    if portable:
        with torch.no_grad():
            features = method.text_features(clip)[0]  # (S, C, d), S = 1 after the context's reduce
        if features.shape[0] != 1:
            raise UserError(f"{type(method).__name__} gives {features.shape[0]} prompt sets per class; only a "
                            "single set of class weights can be exported")
        tensors = {"text_features": features[0].float().contiguous().cpu(), "logit_scale": scale}
    else:
        tensors = {f"method.{k}": v.detach().float().contiguous().cpu() for k, v in method.state_dict().items()}
        tensors["logit_scale"] = scale
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return load_head(out)


def _uses_quick_gelu(clip) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in clip.model.modules())


def _open_clip_config(cfg, clip) -> dict:
    """The open_clip model config dict the model was built from (``open_clip.CLIP(**config)``, or
    ``CustomTextCLIP`` when it holds ``custom_text: true``, as in open_clip's ``model_configs``), with the
    activation the model ran with."""
    from prompt_tuning.backbone.loading import read_arch

    if cfg.model.arch is not None:
        config = read_arch(cfg.model.arch)
    else:
        config = open_clip.get_model_config(clip.name)
        if config is None:
            raise UserError(f"open_clip has no config for the architecture {clip.name!r}, so the file could not "
                            "say how to rebuild it")
        config = json.loads(json.dumps(config))  # a copy, plain
    config["quick_gelu"] = _uses_quick_gelu(clip)
    return config


def _open_clip_name(clip) -> str:
    """The open_clip architecture name that rebuilds this model as it ran: ``ViT-B-16-quickgelu`` for weights
    used with QuickGELU (open_clip's ``ViT-B-16`` with ``pretrained="openai"`` would use GELU)."""
    quick = _uses_quick_gelu(clip)
    name = f"{clip.name}-quickgelu"
    return name if quick and not clip.name.endswith("-quickgelu") and name in open_clip.list_models() else clip.name


def load_head(path: str | Path) -> ExportedHead:
    """Read a head written by `export_head` (or ``prompt-tuning export``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no head file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise UserError(f"{path} is not a head file: {' '.join(str(e).split())[:200]}") from e
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a prompt-tuning head (format {meta.get('format')!r}, expected {FORMAT})")
    return ExportedHead(
        classnames=json.loads(meta["classnames"]),
        text_features=tensors.pop("text_features", None),
        logit_scale=float(tensors.pop("logit_scale")),
        model=meta["model"],
        pretrained=meta.get("pretrained") or None,
        meta=meta,
        tensors=tensors,
    )
