"""FrozenCLIP: exact truncated text pass, frozen weights, model building and its errors."""

import open_clip
import pytest
import torch

from prompt_tuning.clip import FrozenCLIP, _TextTower
from prompt_tuning.errors import UserError

TEXTS = [
    "a photo of a red circle.",
    "a photo of a dog, a type of pet.",
    "X X X X X X X X X X X X X X X X great crested grebe.",
    "a",
    "",
]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16, 33])
@pytest.mark.parametrize("grad", [False, True])
def test_encode_prompts_is_bit_identical_to_open_clip_encode_text(tiny_clip, n, grad):
    tokens = tiny_clip.tokenize((TEXTS * 10)[:n])
    with torch.no_grad():
        reference = tiny_clip.model.encode_text(tokens)  # open_clip's own 77-token pass
    embeddings = tiny_clip.token_embeddings(tokens).requires_grad_(grad)
    ours = tiny_clip.encode_prompts(embeddings, tiny_clip.eot_index(tokens))
    assert ours.shape == reference.shape == (n, tiny_clip.embed_dim)
    assert (ours - reference).abs().max().item() == 0.0


def test_encode_prompts_accepts_embeddings_cut_after_the_eot(tiny_clip):
    tokens = tiny_clip.tokenize(TEXTS[:3])
    eot = tiny_clip.eot_index(tokens)
    full = tiny_clip.token_embeddings(tokens)
    cut = full[:, : int(eot.max()) + 1]
    assert torch.equal(tiny_clip.encode_prompts(full, eot), tiny_clip.encode_prompts(cut, eot))


def test_fallback_full_length_pass_is_also_exact(tiny_clip, monkeypatch):
    tokens = tiny_clip.tokenize(TEXTS[:3])
    reference = tiny_clip.model.encode_text(tokens)
    monkeypatch.setattr(tiny_clip._text, "blocks_known", False)
    ours = tiny_clip.encode_prompts(tiny_clip.token_embeddings(tokens), tiny_clip.eot_index(tokens))
    assert torch.equal(ours, reference)


def test_gradients_flow_to_prompt_embeddings_not_to_clip(tiny_clip):
    tokens = tiny_clip.tokenize(TEXTS[:2])
    embeddings = tiny_clip.token_embeddings(tokens).requires_grad_(True)
    tiny_clip.encode_prompts(embeddings, tiny_clip.eot_index(tokens)).sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_clip.model.parameters())


def test_frozen_model_is_hidden_from_state_dict_and_parameters_and_stays_in_eval(tiny_clip):
    assert tiny_clip.state_dict() == {}
    assert list(tiny_clip.parameters()) == []
    tiny_clip.train()
    assert not tiny_clip.model.training
    assert all(not m.training for m in tiny_clip.model.modules())


def test_dtype_and_device_moves_reach_the_hidden_model():
    from tests.conftest import build_tiny

    clip = build_tiny().to(torch.float64)
    assert clip.model.token_embedding.weight.dtype == torch.float64
    assert clip.model.visual.conv1.weight.dtype == torch.float64


def test_encode_images_normalised(tiny_clip):
    features = tiny_clip.encode_images(torch.randn(3, 3, 32, 32))
    assert features.shape == (3, tiny_clip.embed_dim)
    assert torch.allclose(features.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_eot_index_is_the_end_of_text_position(tiny_clip):
    tokens = tiny_clip.tokenize(["a photo of a dog."])
    n = tiny_clip.n_tokens("a photo of a dog.")  # a, photo, of, a, dog, .
    assert n == 6
    assert tiny_clip.eot_index(tokens).tolist() == [n + 1]  # after SOS and the 6 tokens


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
    with pytest.raises(UserError, match=f"cannot load the weights of model ViT-B-16, pretrained tag '{tag}'.*"
                                        "stop before download.*model.pretrained=/path/to/file"):
        FrozenCLIP.build("ViT-B-16", tag)
    assert seen == {"name": "ViT-B-16", "pretrained": tag, "quick": quick}


def test_local_checkpoint_loads_weights(tmp_path, tiny_clip):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    from tests.conftest import TINY_ARCH

    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    loaded = FrozenCLIP.build("tiny", str(path), arch=str(TINY_ARCH))
    tokens = loaded.tokenize(TEXTS[:2])
    assert torch.equal(loaded.encode_text(TEXTS[:2]), tiny_clip.encode_text(TEXTS[:2]))
    assert loaded.weights == str(path.resolve())
    assert tokens.shape == (2, 77)


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
        _TextTower(HFLike())
