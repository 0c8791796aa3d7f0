"""Few-shot heads on frozen features: linear probe, CLIP-Adapter, Tip-Adapter, Tip-Adapter-F.

Each head is held against a plain re-statement of its authors' code written here (CoOp's lpclip search,
Tip-Adapter's cache model and grid search), trained end to end from the CLI on the shapes data, and checked to
take every image feature from the cache; its published few-shot numbers are looked up per shot in tables and plots.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prompt_tuning.apps.cli import main
from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.methods.base import FrozenFeatures, Task
from prompt_tuning.methods.classifier import zero_shot_classifier
from prompt_tuning.methods.heads.clip_adapter import ClipAdapter
from prompt_tuning.methods.heads.linear_probe import LinearProbe
from prompt_tuning.methods.heads.tip_adapter import TipAdapter
from prompt_tuning.reporting.results import format_table
from prompt_tuning.runs.module import PromptTuner
from prompt_tuning.runs.schedules import warmup_cosine
from tests.conftest import TINY_ARCH

CHANCE = 100.0 / 9  # the shapes dataset has 9 classes
# the tiny random CLIP's zero-shot classifier is at chance, so its heads need room that CLIP's does not
TINY_ARGS = {
    "linear_probe": [],
    "clip_adapter": ["optim.lr=0.5", "optim.max_epochs=60"],
    "tip_adapter": ["method.context.init_args.search_scale=[50,200]"],
    "tip_adapter_f": ["method.context.init_args.search_scale=[50,200]", "optim.max_epochs=5"],
}


def _features(n_classes=5, per_class=8, n_val=3, dim=16, views=1, seed=0):
    """Separable random features: class means plus noise, unnormalised (norms around 10 as CLIP's)."""
    g = torch.Generator().manual_seed(seed)
    means = 10 * F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    val_labels = torch.arange(n_classes).repeat_interleave(n_val)
    train = means[labels] + 6 * torch.randn(views, len(labels), dim, generator=g)
    val = means[val_labels] + 6 * torch.randn(len(val_labels), dim, generator=g)
    return FrozenFeatures(train, labels, val, val_labels)


# --------------------------------------------------------------------------------------------- linear probe
def _lpclip_reference(x, y, xv, yv, steps=8):
    """CoOp's lpclip/linear_probe.py search, restated: the coarse grid, then the bisection in log10 C."""
    from sklearn.linear_model import LogisticRegression

    def fit(c):
        clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(x, y)
        return clf, sum(clf.predict(xv) == yv) / len(yv)

    grid = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    accs = [fit(c)[1] for c in grid]
    peak = grid[int(np.argmax(accs))]
    c_left, c_right = 1e-1 * peak, 1e1 * peak
    for _ in range(steps):
        (clf_l, acc_l), (clf_r, acc_r) = fit(c_left), fit(c_right)
        if acc_l < acc_r:
            c_final, clf_final = c_right, clf_r
            c_left, c_right = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
        else:
            c_final, clf_final = c_left, clf_l
            c_right, c_left = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, clf_final


def test_linear_probe_matches_the_authors_search_and_a_direct_scikit_learn_fit(tiny_clip):
    data = _features(dim=tiny_clip.embed_dim)
    task = Task(tuple(f"class {i}" for i in range(5)))
    probe = LinearProbe(tiny_clip, task)
    probe.fit(tiny_clip, data)
    # lpclip saves features through .tolist() (np.savez): scikit-learn fits Python floats, i.e. float64 rows
    x, xv = np.array(data.train[0].tolist()), np.array(data.val.tolist())
    y, yv = data.train_labels.numpy(), data.val_labels.numpy()
    c, clf = _lpclip_reference(x, y, xv, yv)
    assert probe.c == c
    assert torch.equal(probe.weight, torch.from_numpy(clf.coef_))  # the very same L-BFGS run
    test = torch.randn(40, tiny_clip.embed_dim) * 10
    expected = torch.from_numpy(clf.decision_function(np.array(test.tolist())))
    got = probe.score(tiny_clip, test).logits[0]
    assert got.dtype == torch.float64 and torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(got.argmax(-1), torch.from_numpy(clf.predict(np.array(test.tolist()))))


def test_linear_probe_fits_float64_rows_and_the_dtype_changes_the_weights(tiny_clip):
    """scikit-learn keeps float32 rows in float32 through L-BFGS: fitting them would move the weights."""
    from sklearn.linear_model import LogisticRegression

    data = _features(dim=tiny_clip.embed_dim, seed=3)
    probe = LinearProbe(tiny_clip, Task(tuple("abcde")), steps=0)
    probe.fit(tiny_clip, data)
    y = data.train_labels.numpy()
    f64 = LogisticRegression(max_iter=1000, C=probe.c).fit(np.array(data.train[0].tolist()), y)
    f32 = LogisticRegression(max_iter=1000, C=probe.c).fit(data.train[0].numpy(), y)
    assert f32.coef_.dtype == np.float32 and np.abs(f32.coef_ - f64.coef_).max() > 1e-7
    assert torch.equal(probe.weight, torch.from_numpy(f64.coef_))


def test_linear_probe_normalize_option_fits_unit_features(tiny_clip):
    from sklearn.linear_model import LogisticRegression

    data = _features(dim=tiny_clip.embed_dim)
    probe = LinearProbe(tiny_clip, Task(tuple("abcde")), normalize=True, steps=0)
    probe.fit(tiny_clip, data)
    x = F.normalize(data.train[0].double(), dim=-1).numpy()
    clf = LogisticRegression(max_iter=1000, C=probe.c).fit(x, data.train_labels.numpy())
    test = torch.randn(10, tiny_clip.embed_dim)
    want = torch.from_numpy(clf.decision_function(F.normalize(test.double(), dim=-1).numpy()))
    assert torch.allclose(probe.score(tiny_clip, test).logits[0], want, atol=1e-10)


def test_linear_probe_with_two_classes_scores_like_scikit_learn(tiny_clip):
    data = _features(n_classes=2, dim=tiny_clip.embed_dim)
    probe = LinearProbe(tiny_clip, Task(("a", "b")), steps=1)
    probe.fit(tiny_clip, data)
    test = torch.randn(30, tiny_clip.embed_dim) * 10
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000, C=probe.c).fit(data.train[0].numpy(), data.train_labels.numpy())
    assert torch.equal(probe.score(tiny_clip, test).logits[0].argmax(-1), torch.from_numpy(clf.predict(test.numpy())))


# ---------------------------------------------------------------------------------------------- Tip-Adapter
def _tip_reference_search(scale, steps, keys, values, f, labels, clip_weights):
    """Tip-Adapter's utils.search_hp, restated (everything recomputed inside the loops, as the authors do)."""
    beta_list = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alpha_list = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            affinity = f @ keys
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            tip_logits = 100.0 * f @ clip_weights + cache_logits * alpha
            acc = 100 * float((tip_logits.argmax(-1) == labels).float().sum()) / len(labels)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha


def test_tip_adapter_cache_model_and_search_match_the_authors(tiny_clip):
    n = 5
    task = Task(tuple(f"class {i}" for i in range(n)))
    data = _features(n_classes=n, dim=tiny_clip.embed_dim, views=3)
    tip = TipAdapter(tiny_clip, task, alpha=1.17, beta=1.0, search_scale=(12, 10), search_steps=(30, 10))
    tip.fit(tiny_clip, data)
    keys = data.train.mean(dim=0)  # build_cache_model: mean over augment epochs, then normalised
    keys = (keys / keys.norm(dim=-1, keepdim=True)).T  # (d, N)
    values = F.one_hot(data.train_labels).float()
    assert torch.allclose(tip.keys.T, keys, atol=1e-7) and torch.equal(tip.values, values)
    tip.select(tiny_clip, data)
    f = data.val / data.val.norm(dim=-1, keepdim=True)
    beta, alpha = _tip_reference_search((12, 10), (30, 10), keys, values, f, data.val_labels, tip.classifier.T)
    assert (tip.beta, tip.alpha) == (beta, alpha)
    test = torch.randn(20, tiny_clip.embed_dim)
    ft = test / test.norm(dim=-1, keepdim=True)
    expected = 100.0 * ft @ tip.classifier.T + ((-1) * (beta - beta * (ft @ keys))).exp() @ values * alpha
    assert torch.allclose(tip.score(tiny_clip, test).logits[0], expected, atol=1e-5)


def test_tip_adapter_with_alpha_zero_is_zero_shot_clip(tiny_clip):
    task = Task(tuple(f"class {i}" for i in range(5)), "a photo of a {}.")
    data = _features(dim=tiny_clip.embed_dim)
    tip = TipAdapter(tiny_clip, task, alpha=0.0, search=False)
    tip.fit(tiny_clip, data)
    tip.select(tiny_clip, data)
    images = torch.randn(50, tiny_clip.embed_dim)
    zero_shot = F.normalize(images, dim=-1) @ tiny_clip.encode_text(task.prompts()).T
    tip_logits = tip.score(tiny_clip, images).logits[0]
    assert torch.equal(tip_logits.argmax(-1), zero_shot.argmax(-1))
    assert torch.allclose(tip_logits, 100.0 * zero_shot, atol=1e-4)


def test_zero_shot_classifier_ensembles_templates(tiny_clip):
    names = ("red circle", "great_crested_grebe")
    templates = ["a photo of a {}.", "art of the {}."]
    got = zero_shot_classifier(tiny_clip, names, templates)
    per = torch.stack([tiny_clip.encode_text([t.format(n.replace("_", " ")) for t in templates]) for n in names])
    want = per.mean(1) / per.mean(1).norm(dim=-1, keepdim=True)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(zero_shot_classifier(tiny_clip, names, templates[:1]),
                       tiny_clip.encode_text(Task(names).prompts()))


def test_tip_adapter_f_trains_only_its_keys(tiny_clip):
    task = Task(tuple(f"class {i}" for i in range(5)))
    data = _features(dim=tiny_clip.embed_dim)
    tip = TipAdapter(tiny_clip, task, fine_tune=True)
    module = PromptTuner(tiny_clip, tip, task)
    tip.fit(tiny_clip, data)
    assert [p is tip.keys for p in module.trainable_parameters()] == [True]
    out = module(data.train[0][:8])
    F.cross_entropy(out.logits[0], data.train_labels[:8]).backward()
    assert tip.keys.grad is not None and tip.keys.grad.abs().sum() > 0
    assert set(module.state_dict()) == {"method.keys"}  # the checkpoint holds the learned keys only


# ------------------------------------------------------------------------------------------- CLIP-Adapter
def test_clip_adapter_is_the_authors_residual_mlp(tiny_clip):
    task = Task(tuple(f"class {i}" for i in range(4)))
    torch.manual_seed(0)
    head = ClipAdapter(tiny_clip, task, reduction=4, ratio=0.2)
    d = tiny_clip.embed_dim
    w1, w2 = head.adapter[0].weight, head.adapter[2].weight
    assert w1.shape == (d // 4, d) and w2.shape == (d, d // 4) and head.adapter[0].bias is None
    f = torch.randn(6, d) * 10
    x = torch.relu(torch.relu(f @ w1.T) @ w2.T)
    mixed = 0.2 * x + 0.8 * f
    mixed = mixed / mixed.norm(dim=-1, keepdim=True)
    text = tiny_clip.encode_text(task.prompts())
    expected = tiny_clip.logit_scale * mixed @ text.T
    assert torch.allclose(head.score(tiny_clip, f).logits[0], expected, atol=1e-5)
    module = PromptTuner(tiny_clip, head, task)
    assert {n for n, _ in module.named_parameters() if _.requires_grad} == {"method.adapter.0.weight",
                                                                           "method.adapter.2.weight"}


# ----------------------------------------------------------------------------------------------- schedule
def test_step_interval_is_torch_cosine_annealing_over_all_steps():
    steps, lr = 37, 1e-3
    ours = [lr * warmup_cosine(s, steps, 0, lr, 1e-5) for s in range(steps)]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=lr, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    theirs = []
    for _ in range(steps):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert np.allclose(ours, theirs, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------------------------- end to end
def _train(shapes_dir, out, method, *extra, shots=16, seed=1):
    args = ["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", f"method={method}", f"protocol.shots={shots}",
            f"seed={seed}", "runtime.progress=false", f"output_dir={out}", *TINY_ARGS.get(method, []), *extra]
    assert main(args) == 0
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("method", ["linear_probe", "clip_adapter", "tip_adapter", "tip_adapter_f"])
def test_each_baseline_beats_chance_on_the_shapes_and_is_deterministic(shapes_dir, tmp_path, method):
    first = _train(shapes_dir, tmp_path / "a", method)
    assert first["metrics"]["acc"] > 2 * CHANCE, first["metrics"]
    assert first["trainable"] is True  # learns from the shots: a curve over shots, not a flat line
    again = _train(shapes_dir, tmp_path / "b", method)
    assert again["metrics"] == first["metrics"]


def test_every_image_feature_of_a_baseline_comes_from_the_cache(shapes_dir, tmp_path, monkeypatch):
    calls = []
    original = FrozenCLIP.encode_images

    def counting(self, images, normalize=True, hook=None):
        calls.append(len(images))
        return original(self, images, normalize, hook)

    monkeypatch.setattr(FrozenCLIP, "encode_images", counting)
    monkeypatch.setenv("PT_CACHE_DIR", str(tmp_path / "cache"))
    _train(shapes_dir, tmp_path / "tip", "tip_adapter_f", shots=4)
    # 10 augmented views of the 36 training images, the 36 validation images and the 180 test images, once each
    assert sum(calls) == 10 * 36 + 36 + 180
    calls.clear()
    for method in ("tip_adapter", "tip_adapter_f"):  # the same views, val and test: all cached
        _train(shapes_dir, tmp_path / method, method, "overwrite=true", seed=1, shots=4)
    assert sum(calls) == 0
    _train(shapes_dir, tmp_path / "ca", "clip_adapter", shots=4)
    assert sum(calls) == 10 * 36  # its own views (CoOp's crop scale); training then never runs the encoder
    calls.clear()
    _train(shapes_dir, tmp_path / "lp", "linear_probe", shots=4)
    assert sum(calls) == 36 + 36  # the training images' evaluation view and its few-shot validation draw


def test_tip_adapter_alpha_zero_run_equals_the_zero_shot_run(shapes_dir, tmp_path):
    zs = _train(shapes_dir, tmp_path / "zs", "zeroshot")
    tip = _train(shapes_dir, tmp_path / "tip", "tip_adapter", "method.context.init_args.alpha=0",
                 "method.context.init_args.search=false")
    assert tip["metrics"]["acc"] == zs["metrics"]["acc"]


def test_cache_on_and_off_give_the_same_numbers(shapes_dir, tmp_path):
    on = _train(shapes_dir, tmp_path / "on", "tip_adapter_f", shots=2)
    off = _train(shapes_dir, tmp_path / "off", "tip_adapter_f", "runtime.feature_cache=false",
                 "data.cache_views=0", shots=2)
    # without the cache, the keys' views are encoded the same way; training then sees fresh augmentations
    assert on["metrics"]["acc"] > 2 * CHANCE and off["metrics"]["acc"] > 2 * CHANCE
    tip_on = _train(shapes_dir, tmp_path / "tip_on", "tip_adapter", shots=2)
    tip_off = _train(shapes_dir, tmp_path / "tip_off", "tip_adapter", "runtime.feature_cache=false", shots=2)
    assert tip_on["metrics"] == tip_off["metrics"]  # the same augmented views, drawn with the cache's seeds
    lp_on = _train(shapes_dir, tmp_path / "lp_on", "linear_probe", shots=2)
    lp_off = _train(shapes_dir, tmp_path / "lp_off", "linear_probe", "runtime.feature_cache=false", shots=2)
    assert lp_on["metrics"] == lp_off["metrics"]


def test_eval_of_a_tip_adapter_f_run_gives_its_numbers(shapes_dir, tmp_path, capsys):
    """`eval` fits the cache again, loads the trained keys and searches alpha/beta again: the run's numbers."""
    result = _train(shapes_dir, tmp_path / "run", "tip_adapter_f", shots=4)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "runtime.progress=false"]) == 0
    assert json.loads(capsys.readouterr().out)["acc"] == result["metrics"]["acc"]


def test_a_class_bound_head_refuses_other_class_sets_before_training(shapes_dir, tmp_path):
    out = tmp_path / "b2n"
    args = ["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=tip_adapter", "protocol=base2novel",
            "runtime.progress=false", f"output_dir={out}"]
    assert main(args) == 2
    assert not (out / "config.yaml").exists()


def test_export_refuses_a_head(shapes_dir, tmp_path, capsys):
    _train(shapes_dir, tmp_path / "run", "linear_probe", shots=1)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "own head" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_published_few_shot_numbers_are_looked_up_per_shot():
    published = {"values": {"tip_adapter": {"eurosat": {"acc": {1: 54.38, 16: 70.54}}}}}
    table = {("tip_adapter", 1): {"eurosat": {"acc": (50.0, 1.0, 3)}},
             ("tip_adapter", 16): {"eurosat": {"acc": (70.0, 1.0, 3)}}}
    text = format_table(table, published=published)
    assert "54.38 | -4.38" in text and "70.54 | -0.54" in text


def test_plot_draws_published_few_shot_numbers_beside_the_runs():
    from prompt_tuning.reporting.plot import curves_figure

    published = {"values": {"tip_adapter": {"eurosat": {"acc": {1: 54.38, 16: 70.54}}}}}
    table = {("tip_adapter", 1): {"eurosat": {"acc": (50.0, 1.0, 3)}},
             ("tip_adapter", 16): {"eurosat": {"acc": (70.0, 1.0, 3)}},
             ("coop", 1): {"eurosat": {"acc": (40.0, 1.0, 3)}}}
    fig = curves_figure(table, published=published)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["Tip-Adapter (published)"].get_ydata()) == [54.38, 70.54]
    assert "CoOp (published)" not in lines  # nothing published for CoOp: nothing drawn
    assert "published numbers" in fig.texts[-1].get_text()
