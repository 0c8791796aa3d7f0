"""The hook contract of the backbone: a hook that changes nothing leaves both passes as open_clip computes them,
hooks compose in order, a hook is called at every block with the layout of what it sees, and a change in the
attention projections reaches the image tower."""

import torch

from prompt_tuning.backbone import Hook, Hooks, Projections


class Counting(Hook):
    def __init__(self):
        self.calls = []

    def before_block(self, i, x, layout):
        self.calls.append((layout.tower, i, x.shape[1], layout.blocks, layout.classes))
        return x


class AddAfter(Hook):
    def __init__(self, value):
        self.value = value

    def after_block(self, i, x, layout):
        return x + self.value if i == layout.blocks - 1 else x


def test_a_hook_that_changes_nothing_leaves_both_passes_exact(tiny_clip):
    tokens = tiny_clip.tokenize(["a photo of a dog.", "a red circle."])
    emb, eot = tiny_clip.token_embeddings(tokens), tiny_clip.eot_index(tokens)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tiny_clip.encode_prompts(emb, eot, Hooks(Hook(), Counting())),
                           tiny_clip.model.encode_text(tokens))
        assert torch.equal(tiny_clip.encode_images(images, normalize=False, hook=Hooks()),
                           tiny_clip.model.encode_image(images))


def test_hooks_are_called_at_every_block_with_the_layout(tiny_clip):
    counting = Counting()
    tokens = tiny_clip.tokenize(["a photo of a dog.", "a red circle."])
    with torch.no_grad():
        tiny_clip.encode_prompts(tiny_clip.token_embeddings(tokens), tiny_clip.eot_index(tokens), counting)
        tiny_clip.encode_images(torch.randn(2, 3, 32, 32), hook=counting)
    length = int(tiny_clip.eot_index(tokens).max()) + 1
    blocks = tiny_clip.text_blocks
    assert counting.calls[:blocks] == [("text", i, max(length, 8), blocks, 2) for i in range(blocks)]
    assert counting.calls[blocks:] == [("image", i, 1 + 16, tiny_clip.vision_blocks, 0)
                                       for i in range(tiny_clip.vision_blocks)]


def test_hooks_compose_in_order(tiny_clip):
    images = torch.randn(2, 3, 32, 32)
    shift = torch.linspace(-1.0, 1.0, tiny_clip.vision_width)  # not constant: ln_post would remove a constant
    with torch.no_grad():
        one = tiny_clip.encode_images(images, normalize=False, hook=AddAfter(shift))
        two = tiny_clip.encode_images(images, normalize=False, hook=Hooks(AddAfter(shift / 2), AddAfter(shift / 2)))
        plain = tiny_clip.encode_images(images, normalize=False)
    assert torch.allclose(one, two, atol=1e-5) and not torch.allclose(one, plain, atol=1e-3)


def test_new_attention_projections_reach_the_image_tower(tiny_clip):
    class Zeroed(Hook):
        def attention(self, i, w):
            return Projections(w.in_weight, w.in_bias, torch.zeros_like(w.out_weight), torch.zeros_like(w.out_bias))

    images = torch.randn(2, 3, 32, 32)
    same = Hook()
    same.attention = lambda i, w: Projections(w.in_weight, w.in_bias, w.out_weight, w.out_bias)  # a copy of them
    with torch.no_grad():
        plain = tiny_clip.encode_images(images, normalize=False)
        copied = tiny_clip.encode_images(images, normalize=False, hook=same)
        zeroed = tiny_clip.encode_images(images, normalize=False, hook=Zeroed())
    assert torch.allclose(copied, plain, rtol=1e-5, atol=1e-5)  # the backbone's own attention equals the block's
    assert not torch.allclose(zeroed, plain, atol=1e-3)
