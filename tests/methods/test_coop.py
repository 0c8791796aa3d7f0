"""CoOp's context: initialisation (from words, counted as the authors count them, or random), the class-token
positions against the reference construction, class-specific contexts, and rebinding to other classes."""

import pytest
import torch

from prompt_tuning.core.errors import UserError
from prompt_tuning.methods.base import Task
from prompt_tuning.methods.contexts.coop import CoOp
from prompt_tuning.methods.contexts.zeroshot import ZeroShot


def test_init_from_words_equals_zero_shot_prompt_at_step_0(tiny_clip, task):
    coop = CoOp(tiny_clip, task, ctx_init="a photo of a")
    zs = ZeroShot(tiny_clip, Task(task.classnames, "a photo of a {}."))
    assert coop.n_ctx == 4 and coop.ctx.shape == (4, tiny_clip.width)
    assert torch.equal(coop().embeddings, zs().embeddings)
    assert torch.equal(coop().eot_index, zs().eot_index)
    assert torch.equal(coop.text_features(tiny_clip)[0], zs.text_features(tiny_clip)[0])


def test_ctx_init_takes_as_many_token_embeddings_as_words(tiny_clip, task):
    words = "a type of pet, a photo of a"  # 8 words, 9 BPE tokens ("pet" ",")
    ctx = CoOp(tiny_clip, task, ctx_init=words)
    tokens = tiny_clip.tokenize(words)
    assert ctx.n_ctx == 8 == len(words.split(" ")) < tiny_clip.n_tokens(words)
    assert torch.equal(ctx.ctx.data, tiny_clip.token_embeddings(tokens)[0, 1:9])
    # the word left out of the context ("a") stays in the fixed text, before the class name, as in the reference
    first = tiny_clip.tokenize(f"{words} {task.classnames[0]}.")[0]
    assert torch.equal(ctx.frame.token_suffix[0, :3], tiny_clip.token_embeddings(first[None])[0, 9:12])
    for shipped in ("a photo of a",):  # every shipped config: words == tokens, so nothing changes
        assert CoOp(tiny_clip, task, ctx_init=shipped).n_ctx == tiny_clip.n_tokens(shipped)


def test_zero_shot_features_equal_open_clip_on_the_template(tiny_clip, task):
    zs = ZeroShot(tiny_clip, task)
    reference = tiny_clip.model.encode_text(tiny_clip.tokenize(task.prompts()), normalize=True)
    assert torch.equal(zs.text_features(tiny_clip)[0][0], reference)
    assert task.prompts()[1] == "a photo of a great crested grebe."


def _reference_prompts(coop: CoOp, names: list[str], clip) -> torch.Tensor:
    """The class-token placement loop of CoOp's reference PromptLearner.forward, written out."""
    n_cls = len(names)
    ctx = coop.ctx if coop.ctx.dim() == 3 else coop.ctx.unsqueeze(0).expand(n_cls, -1, -1)
    prefix, suffix = coop.frame.token_prefix, coop.frame.token_suffix
    name_lens = [clip.n_tokens(n) for n in names]
    half = coop.n_ctx // 2
    out = []
    for i in range(n_cls):
        k = name_lens[i]
        p, c, s = prefix[i : i + 1], suffix[i : i + 1, :k], suffix[i : i + 1, k:]
        if coop.frame.position == "end":
            out.append(torch.cat([p, ctx[i : i + 1], c, s], 1))
        elif coop.frame.position == "middle":
            out.append(torch.cat([p, ctx[i : i + 1, :half], c, ctx[i : i + 1, half:], s], 1))
        else:
            out.append(torch.cat([p, c, ctx[i : i + 1], s], 1))
    return torch.cat(out)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
@pytest.mark.parametrize("n_ctx", [1, 5, 16])
def test_class_token_positions_match_the_reference_construction(tiny_clip, task, position, csc, n_ctx):
    torch.manual_seed(0)
    coop = CoOp(tiny_clip, task, n_ctx=n_ctx, csc=csc, class_token_position=position)
    prompts = coop()
    assert prompts.embeddings.shape[:2] == (1, len(task.classnames))
    expected = _reference_prompts(coop, [n.replace("_", " ") for n in task.classnames], tiny_clip)
    assert torch.equal(prompts.embeddings[0], expected)


def test_front_position_puts_the_class_name_right_after_sos(tiny_clip, task):
    coop = CoOp(tiny_clip, task, n_ctx=3, class_token_position="front")
    emb = coop().embeddings[0]
    dog = tiny_clip.token_embeddings(tiny_clip.tokenize("dog"))[0, 1]
    assert torch.equal(emb[2, 1], dog)  # class 2 is "dog": position 1 holds its token
    assert torch.equal(emb[2, 2:5], coop.ctx)  # then the 3 context vectors


def test_eot_index_points_at_the_end_of_text_token(tiny_clip, task):
    coop = CoOp(tiny_clip, task, n_ctx=16)
    tokens = tiny_clip.tokenize([f"{' '.join(['X'] * 16)} {n.replace('_', ' ')}." for n in task.classnames])
    assert torch.equal(coop().eot_index, tokens.argmax(-1))


def test_random_init_is_normal_with_std_002(tiny_clip, task):
    torch.manual_seed(0)
    coop = CoOp(tiny_clip, task, n_ctx=16, csc=True)
    assert coop.ctx.shape == (len(task.classnames), 16, tiny_clip.width)
    assert 0.018 < coop.ctx.std().item() < 0.022
    assert abs(coop.ctx.mean().item()) < 0.003


def test_csc_with_words_starts_every_class_from_the_words(tiny_clip, task):
    coop = CoOp(tiny_clip, task, ctx_init="a photo of a", csc=True)
    assert coop.ctx.shape == (len(task.classnames), 4, tiny_clip.width)
    assert torch.equal(coop.ctx[0], coop.ctx[3])


def test_only_learned_vectors_are_in_the_state_dict(tiny_clip, task):
    coop = CoOp(tiny_clip, task, n_ctx=4)
    assert list(coop.state_dict()) == ["ctx"]


def test_unified_context_transfers_to_other_classes(tiny_clip, task):
    coop = CoOp(tiny_clip, task, n_ctx=4)
    ctx = coop.ctx.detach().clone()
    other = Task(("cat", "a very long class name with many words"))
    coop.set_task(tiny_clip, other)
    prompts = coop()
    assert prompts.embeddings.shape[1] == 2
    assert torch.equal(prompts.embeddings[0, 0, 1:5], ctx)


def test_class_specific_context_refuses_another_class_count(tiny_clip, task):
    coop = CoOp(tiny_clip, task, n_ctx=4, csc=True)
    with pytest.raises(UserError, match="learned for 4 classes"):
        coop.set_task(tiny_clip, Task(("cat", "dog")))


def test_bad_position_is_a_user_error(tiny_clip, task):
    with pytest.raises(UserError, match="end, middle, front"):
        CoOp(tiny_clip, task, class_token_position="back")
