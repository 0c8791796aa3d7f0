"""Loading a frozen open_clip model: an architecture name with a pretrained tag, a local checkpoint file (OpenAI's
TorchScript archives or state dicts, open_clip's formats), or an architecture config dict for tests, with the
QuickGELU that OpenAI's weights need detected; and, for dry runs, where a model's weights would come from.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import urllib.parse
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from prompt_tuning.core.errors import UserError, close_matches


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for this model (from open_clip's preprocess config)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class Loaded:
    """An open_clip model with what it needs beside it."""

    model: nn.Module
    tokenizer: Any
    preprocess: Preprocess
    name: str
    weights: str  # the weights' identity: a pretrained tag, a checkpoint's absolute path, or ``random``


def load_open_clip(name: str = "ViT-B-16", pretrained: str | None = "openai", arch: dict | str | None = None,
                   cache_dir: str | None = None, quick_gelu: bool | str = "auto",
                   allow_torchscript: bool = False) -> Loaded:
    """An open_clip model from an architecture name, a pretrained tag or local checkpoint, or a config dict.

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
        allow_torchscript: load a local TorchScript archive (OpenAI's original release format); loading one runs
            code from the file, so it is refused unless asked for.
    """
    force = _quick_gelu_setting(quick_gelu)
    local = bool(pretrained) and os.path.isfile(str(pretrained))
    state, openai_format = read_checkpoint(pretrained, allow_torchscript) if local else (None, False)
    if arch is not None:
        cfg = read_arch(arch)
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
        return Loaded(model, tokenizer, preprocess, name, weights)

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
    return Loaded(model, open_clip.get_tokenizer(name), preprocess, name, weights)


PROBE_SECONDS = 3.0  # how long a download host may take to answer before we call the machine offline


def unreachable(name: str, tag: str) -> str | None:
    """Why the weights of an uncached tag cannot be downloaded from here, found in seconds (the hub client would
    retry for a minute): offline mode, or no connection to the host. None when a download may work (a proxy is
    set, or the host answers)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy decides; a direct connection says nothing
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.get("hf_hub") else cfg.get("url", "")
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return None
    try:
        socket.create_connection((host, 443), timeout=PROBE_SECONDS).close()
    except OSError as e:
        return f"no connection to {host}: {e.strerror or type(e).__name__}"
    return None


def _create(name: str, tag: str | None, quick_gelu: bool, cache_dir: str | None) -> nn.Module:
    """``open_clip.create_model``, with a failed download turned into one line saying what to do (at once when
    the weights are not cached and their host cannot be reached)."""
    disabled = logging.root.manager.disable
    logging.disable(logging.ERROR)  # the hub's retry chatter and open_clip's own error log: reported below
    try:
        why = unreachable(name, tag) if tag and weights_status(name, tag, None, cache_dir) == "download" else None
        if why:
            raise OSError(why)
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


def read_checkpoint(path: str | os.PathLike, allow_torchscript: bool = False) -> tuple[dict | None, bool]:
    """A local weight file's state dict and whether it is in OpenAI's format (a TorchScript archive, or a
    state dict carrying OpenAI's ``input_resolution``/``context_length``/``vocab_size`` entries).

    Pickled checkpoints load with ``weights_only=True``. Formats open_clip reads itself (``.safetensors``,
    ``.npz``) give ``(None, False)`` and are left to `open_clip.load_checkpoint`.
    """
    path = str(path)
    if Path(path).suffix in (".safetensors", ".npz", ".npy"):
        return None, False
    try:
        if _is_torchscript(path) and not allow_torchscript:
            raise UserError(f"model.pretrained={path!r} is a TorchScript archive (OpenAI's original release format): "
                            "loading one runs code stored in the file; if you trust it, pass "
                            "model.allow_torchscript=true, or convert it to a state dict once")
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


def read_arch(arch: dict | str | Any) -> dict:
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
