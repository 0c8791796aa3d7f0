"""Protocols: few-shot draws equal to the reference sampler's (Dassl's), short classes, shots that no class can
give, all shots, and the base/novel class split."""

import random
from collections import defaultdict

import pytest

from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datasets import Item
from prompt_tuning.data.protocols import check_shots, few_shot, few_shot_splits, short_classes, subsample_classes


def _items(n_classes=5, per_class=12, shuffle_seed=3, split="train"):
    items = [Item(f"{split}/{c}/{i}.jpg", c, f"class{c}") for c in range(n_classes) for i in range(per_class)]
    random.Random(shuffle_seed).shuffle(items)  # labels interleaved, as in real split files
    return items


def _reference_draw(data, shots):
    """Dassl's generate_fewshot_dataset with the global `random`, as the reference runs it."""
    tracker = defaultdict(list)
    for item in data:
        tracker[item.label].append(item)
    out = []
    for items in tracker.values():
        out.extend(random.sample(items, shots) if len(items) >= shots else items)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("shots", [1, 2, 4, 8])
def test_few_shot_draw_equals_the_reference_sampler(seed, shots):
    train, val = _items(), _items(per_class=6, shuffle_seed=5, split="val")
    random.seed(seed)
    ref_train = _reference_draw(train, shots)
    ref_val = _reference_draw(val, min(shots, 4))
    ours_train, ours_val = few_shot_splits(train, val, shots, seed)
    assert ours_train == ref_train
    assert ours_val == ref_val


def test_exact_items_for_a_known_seed():
    train = [Item(f"img{i}.jpg", i % 2, ["cat", "dog"][i % 2]) for i in range(10)]
    chosen, _ = few_shot_splits(train, train, 2, seed=1)
    # random.seed(1); random.sample(cats, 2) then random.sample(dogs, 2): pinned here as plain data
    assert [it.path for it in chosen] == ["img2.jpg", "img0.jpg", "img5.jpg", "img1.jpg"]


def test_k_per_class_same_seed_same_draw_other_seed_other_draw():
    train = _items()
    a = few_shot(train, 4, random.Random(7))
    b = few_shot(train, 4, random.Random(7))
    c = few_shot(train, 4, random.Random(8))
    assert a == b and a != c
    counts = defaultdict(int)
    for item in a:
        counts[item.label] += 1
    assert dict(counts) == {label: 4 for label in range(5)}


def test_a_class_with_too_few_images_keeps_them_all_with_one_warning(caplog):
    short = [Item(f"train/{c}/{i}.jpg", c, f"class{c}") for c in range(5) for i in range(3)]
    full = [Item(f"train/5/{i}.jpg", 5, "class5") for i in range(20)]
    with caplog.at_level("WARNING", logger="prompt_tuning"):
        drawn = few_shot(short + full, 16, random.Random(0))
    # Dassl (repeat=False): a short class keeps all it has and draws nothing from the generator
    assert drawn == short + random.Random(0).sample(full, 16)
    (record,) = [r for r in caplog.records if r.name.startswith("prompt_tuning")]
    assert "16 shots asked, but 5 classes have fewer training images" in record.getMessage()
    assert "'class0' (3)" in record.getMessage()


def test_shots_no_class_can_give_are_refused_and_short_classes_are_named():
    short = [Item(f"train/{c}/{i}.jpg", c, f"class{c}") for c in range(3) for i in range(3 + c)]  # 3, 4, 5 images
    assert short_classes(short, 4) == {"class0": 3} and short_classes(short, -1) == {}
    check_shots(short, 5, "toy")  # one class has 5: the others keep all they have, as in the reference sampler
    with pytest.raises(UserError, match=r"^protocol.shots=6: no class of dataset toy has 6 training images \(the "
                                        r"most: 5, the fewest: 3, class 'class0'\); choose protocol.shots <= 5, "
                                        r"or -1 for all$"):
        check_shots(short, 6, "toy")
    check_shots(short, -1, "toy")


def test_all_shots_returns_everything():
    train = _items()
    assert few_shot(train, -1, random.Random(0)) == train


@pytest.mark.parametrize("n_classes, n_base", [(5, 3), (6, 3), (1, 1), (101, 51)])
def test_base_novel_split_is_disjoint_relabelled_and_ceil_half(n_classes, n_base):
    train = _items(n_classes=n_classes, per_class=2)
    (base,) = subsample_classes(train, subsample="base")
    (novel,) = subsample_classes(train, subsample="novel")
    base_names = {it.classname for it in base}
    novel_names = {it.classname for it in novel}
    assert base_names.isdisjoint(novel_names)
    assert len(base_names) == n_base and len(novel_names) == n_classes - n_base
    assert {it.label for it in base} == set(range(n_base))
    assert {it.label for it in novel} == set(range(n_classes - n_base))
    # novel class "class{n_base}" becomes label 0
    if novel:
        assert {it.label for it in novel if it.classname == f"class{n_base}"} == {0}


def test_subsample_uses_the_first_split_labels_for_all_splits():
    train, test = _items(per_class=2), _items(per_class=3, split="test")
    base_train, base_test = subsample_classes(train, test, subsample="base")
    assert {it.classname for it in base_train} == {it.classname for it in base_test} == {"class0", "class1", "class2"}


def test_unknown_subsample_is_a_user_error():
    with pytest.raises(UserError, match="all, base, novel"):
        subsample_classes([], subsample="newer")


def test_reference_name_new_is_an_alias_of_novel():
    train = _items(n_classes=4, per_class=2)
    assert subsample_classes(train, subsample="new") == subsample_classes(train, subsample="novel")
