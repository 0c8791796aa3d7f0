"""Loading the frozen CLIP: architecture names and pretrained tags (with close-name suggestions and no download),
QuickGELU for OpenAI weights (tags and local files in OpenAI's formats) but not for open_clip's, local checkpoints,
and the text towers that cannot be prompted, refused with a clear error."""

import json
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from prompt_tuning.backbone import FrozenCLIP, loading
from prompt_tuning.backbone.clip import TextTower
from prompt_tuning.core.errors import UserError
from tests.conftest import TINY_ARCH

TEXTS = ["a photo of a red circle.", "a photo of a dog, a type of pet."]


# ------------------------------------------------------------------------------ names and pretrained tags
def test_unknown_architecture_suggests_close_names():
    with pytest.raises(UserError, match="ViT-B-16"):
        FrozenCLIP.build("ViT-B-61", None)


def test_unknown_pretrained_tag_lists_tags_without_downloading():
    with pytest.raises(UserError, match="did you mean 'openai'"):
        FrozenCLIP.build("ViT-B-16", "opneai")


@pytest.mark.parametrize("tag, quick", [("openai", True), ("laion2b_s34b_b88k", False)])
def test_openai_weights_get_quickgelu(monkeypatch, tag, quick):
    seen = {}

    def fake_create_model(name, pretrained=None, force_quick_gelu=False, **kw):
        seen.update(name=name, pretrained=pretrained, quick=force_quick_gelu)
        raise RuntimeError("stop before download")

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    monkeypatch.setattr(loading, "unreachable", lambda *a: None)  # as if the hub answered
    with pytest.raises(UserError, match=f"cannot load the weights of model ViT-B-16, pretrained tag '{tag}'.*"
                                        "stop before download.*model.pretrained=/path/to/file"):
        FrozenCLIP.build("ViT-B-16", tag)
    assert seen == {"name": "ViT-B-16", "pretrained": tag, "quick": quick}


@pytest.mark.parametrize("env", [{}, {"HF_HUB_OFFLINE": "1"}])
def test_offline_an_uncached_tag_fails_at_once_without_the_hub_retrying(monkeypatch, tmp_path, env):
    calls = []
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: calls.append(a) or pytest.fail("downloads"))
    monkeypatch.setattr(loading.socket, "create_connection",
                        lambda address, timeout: calls.append((address, timeout)) or (_ for _ in ()).throw(
                            OSError(101, "Network is unreachable")))
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match="pretrained tag 'openai': they are not in the local cache and the download "
                                        "failed \\((no connection to huggingface.co: Network is unreachable|"
                                        "HF_HUB_OFFLINE is set)\\)"):
        FrozenCLIP.build("ViT-B-16", "openai", cache_dir=str(tmp_path))
    assert calls == ([] if env else [(("huggingface.co", 443), loading.PROBE_SECONDS)])  # one probe, no download


# ------------------------------------------------------------------------------------- local checkpoints
def test_local_checkpoint_loads_weights(tmp_path, tiny_clip):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    loaded = FrozenCLIP.build("tiny", str(path), arch=str(TINY_ARCH))
    tokens = loaded.tokenize(TEXTS[:2])
    assert torch.equal(loaded.encode_text(TEXTS[:2]), tiny_clip.encode_text(TEXTS[:2]))
    assert loaded.weights == str(path.resolve())
    assert tokens.shape == (2, 77)


def _openai_tiny(tmp_path: Path, kind: str) -> tuple[Path, torch.nn.Module]:
    cfg = json.loads(TINY_ARCH.read_text())
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg, quick_gelu=True).eval()  # trained with QuickGELU, as OpenAI's models
    path = tmp_path / f"tiny-openai-{kind}.pt"
    if kind == "state_dict":  # OpenAI's layout: their three extra entries
        extra = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
                 "vocab_size": torch.tensor(49408)}
        torch.save({**model.state_dict(), **extra}, path)
    else:  # a TorchScript archive, as OpenAI released
        example = (torch.zeros(1, 3, 32, 32), open_clip.tokenize(["a dog"]))
        traced = torch.jit.trace_module(model, {"encode_image": example[0], "encode_text": example[1]},
                                        check_trace=False)
        traced.save(str(path))
    return path, model


@pytest.mark.parametrize("kind", ["state_dict", "torchscript"])
def test_local_openai_weights_get_quick_gelu(tmp_path, kind):
    path, reference = _openai_tiny(tmp_path, kind)
    arch = json.loads(TINY_ARCH.read_text())
    trusted = kind == "torchscript"  # an archive runs code when loaded: only on model.allow_torchscript=true
    clip = FrozenCLIP.build("tiny", str(path), arch=arch, allow_torchscript=trusted)
    assert isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    images = torch.randn(4, 3, 32, 32)
    reference.requires_grad_(False)
    assert torch.equal(clip.model.encode_image(images), reference.encode_image(images))
    forced = FrozenCLIP.build("tiny", str(path), arch=arch, quick_gelu="false", allow_torchscript=trusted)
    assert not isinstance(forced.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert (forced.model.encode_image(images) - reference.encode_image(images)).abs().max() > 1e-4


def test_a_torchscript_archive_is_refused_unless_allowed(tmp_path):
    path, _ = _openai_tiny(tmp_path, "torchscript")
    with pytest.raises(UserError, match="is a TorchScript archive .*runs code .*model.allow_torchscript=true"):
        FrozenCLIP.build("tiny", str(path), arch=json.loads(TINY_ARCH.read_text()))


def test_open_clip_format_weights_keep_gelu(tmp_path):
    arch = json.loads(TINY_ARCH.read_text())
    torch.manual_seed(0)
    model = open_clip.CLIP(**arch)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    clip = FrozenCLIP.build("tiny", str(tmp_path / "plain.pt"), arch=arch)
    assert not isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_quick_gelu_setting_is_checked():
    with pytest.raises(Exception, match="model.quick_gelu='maybe': choose auto, true or false"):
        FrozenCLIP.build("tiny", None, arch=json.loads(TINY_ARCH.read_text()), quick_gelu="maybe")


# --------------------------------------------------------------------------------------- refused towers
def test_text_tower_without_eot_pooling_is_refused():
    arch = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "pool_type": "last"},
    }
    with pytest.raises(UserError, match="cannot be prompted"):
        FrozenCLIP.build("last-pooled", None, arch=arch)


def test_tower_without_a_transformer_is_refused():
    class HFLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text = torch.nn.Linear(2, 2)  # stands in for a Hugging Face text encoder

    with pytest.raises(UserError, match="Hugging Face text towers are not supported"):
        TextTower(HFLike())
