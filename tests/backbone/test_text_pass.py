"""The frozen CLIP's passes: the truncated text pass bit-identical to open_clip's, the image pass, gradients reaching
prompt embeddings but never the frozen weights, and the module plumbing (hidden from state dicts, eval mode, casts)."""

import pytest
import torch

from tests.conftest import build_tiny

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
