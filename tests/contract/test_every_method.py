"""The contract suite: every method config (the package's, and the three test-only methods of new kinds in
``tests/contract/new_kinds``) trains from the command line, holds only its learned tensors in its checkpoint,
sends gradients only to them, rebinds to another class set unless it is class-bound, gives the same numbers with
the feature cache on and off, exports exactly when it says it can, keeps the shared-prefix text pass equal to the
full one, scores in fp32 under bf16 autocast, and declares capabilities that agree with what it does.

A config dropped into ``prompt_tuning/configs/method/`` (or a folder of ``$PT_CONFIG_DIR``) is covered with no edit
here. Every config runs unchanged on the 12-block tiny CLIP (``tests/assets/tiny_clip_deep.json``).
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prompt_tuning.apps.cli import main
from prompt_tuning.apps.export import export_head
from prompt_tuning.config.compose import compose
from prompt_tuning.core.errors import UserError
from prompt_tuning.methods.base import Context, Task
from prompt_tuning.runs.build import build
from prompt_tuning.runs.checkpoints import load_checkpoint
from prompt_tuning.runs.folder import RunFolder
from prompt_tuning.runs.runner import fit_frozen
from tests.conftest import TINY_DEEP_ARCH, method_configs

NEW_KINDS = Path(__file__).parent / "new_kinds" / "configs" / "method"
CONFIGS = {**{name: name for name in method_configs()}, **{p.stem: str(p) for p in sorted(NEW_KINDS.glob("*.yaml"))}}
COMMON = [f"model={TINY_DEEP_ARCH}", "protocol.shots=2", "optim.max_epochs=1", "data.batch_size=6",
          "runtime.progress=false"]
OTHER_CLASSES = Task(("green triangle", "purple star", "grey hexagon"))


def _args(method: str, shapes_dir: Path, *extra: str) -> list[str]:
    return [f"dataset={shapes_dir}", f"method={CONFIGS[method]}", *COMMON, *_one_epoch(method, shapes_dir), *extra]


def _one_epoch(method: str, shapes_dir: Path) -> list[str]:
    """A one-epoch run of a method that averages over epochs centres its average on that epoch (a mean beyond
    the run's epochs is refused)."""
    cfg = compose([f"dataset={shapes_dir}", f"method={CONFIGS[method]}", f"model={TINY_DEEP_ARCH}"])
    averaging = cfg.method.get("averaging")
    return ["method.averaging.init_args.mean=1"] if averaging and "mean" in averaging.get("init_args", {}) else []


_RUNS: dict[tuple, Path] = {}


@pytest.fixture(scope="session")
def trained(shapes_dir, tmp_path_factory):
    """``trained(method, cache=True)``: the folder of a one-epoch run of the method from the CLI (one per session)."""

    def run(method: str, cache: bool = True) -> Path:
        key = (method, cache)
        if key not in _RUNS:
            out = tmp_path_factory.mktemp(f"{method}-{'cache' if cache else 'nocache'}")
            code = main(["train", *_args(method, shapes_dir, f"runtime.feature_cache={str(cache).lower()}",
                                         f"output_dir={out}")])
            assert code == 0, f"{method}: train exited {code}"
            _RUNS[key] = out
        return _RUNS[key]

    return run


def _setup(method: str, shapes_dir: Path, tmp_path: Path):
    setup = build(compose(_args(method, shapes_dir, f"output_dir={tmp_path}")))
    fit_frozen(setup)
    return setup


def _batch(setup, n: int = 4) -> dict:
    return next(iter(torch.utils.data.DataLoader(setup.datamodule.train_set, batch_size=n)))


@pytest.mark.parametrize("method", CONFIGS)
def test_trains_from_the_cli_and_eval_reproduces_its_result(trained, method, capsys):
    folder = RunFolder(trained(method))
    result = folder.result()
    setup_module = build(folder.config()).module
    assert result["epochs"] == (1 if setup_module.trainable else 0)
    assert result["trainable"] == setup_module.learns
    assert (folder.last_checkpoint.is_file()) == setup_module.trainable
    capsys.readouterr()
    assert main(["eval", str(folder.path)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == result["metrics"], f"{method}: eval of the run gives {again}, train wrote {result['metrics']}"


@pytest.mark.parametrize("method", CONFIGS)
def test_the_checkpoint_holds_only_the_learned_tensors_and_restores_the_logits(trained, method, shapes_dir):
    folder = RunFolder(trained(method))
    cfg = folder.config()
    fresh = build(cfg)
    if not fresh.module.trainable:
        pytest.skip(f"{method} learns no tensor by gradients: it writes no checkpoint")
    learned = {f"method.{n}" for n, p in fresh.module.method.named_parameters() if p.requires_grad}
    state = load_checkpoint(folder.last_checkpoint)["state_dict"]
    assert {k for k in state if k.startswith("method.")} == learned, f"{method}: {sorted(state)}"
    others = {k for k in state if not k.startswith("method.")}
    assert all(k.startswith("averaging.") for k in others), f"{method} checkpoints {sorted(others)}"
    fit_frozen(fresh)
    trained_module = build(cfg)
    fit_frozen(trained_module)
    trained_module.module.load_state_dict(state, strict=True)
    fresh.module.eval(), trained_module.module.eval()
    batch = _batch(fresh)
    torch.manual_seed(0)
    before = fresh.module(fresh.module.image_features(batch)).logits
    torch.manual_seed(0)
    after = trained_module.module(trained_module.module.image_features(batch)).logits
    assert not torch.equal(before, after), f"{method}: training one epoch changed no logit"
    restored = build(cfg)
    fit_frozen(restored)
    restored.module.load_state_dict(state, strict=True)
    restored.module.eval()
    torch.manual_seed(0)
    assert torch.equal(restored.module(restored.module.image_features(batch)).logits, after)


@pytest.mark.parametrize("method", CONFIGS)
def test_gradients_reach_the_learned_tensors_and_nothing_else(method, shapes_dir, tmp_path):
    setup = _setup(method, shapes_dir, tmp_path)
    module = setup.module
    if not module.trainable:
        pytest.skip(f"{method} learns no tensor by gradients")
    frozen = {k: v.clone() for k, v in module.clip.model.state_dict().items()}
    module.train()
    outputs, inputs = module.training_outputs(_batch(setup))
    terms = module.loss_terms(outputs, _batch(setup)["label"], inputs)
    params = module.trainable_parameters()
    if module.gradient_rule is not None:
        module.gradient_rule(terms, params)
    else:
        sum(terms.values()).backward()
    assert all(p.grad is not None for p in params), f"{method}: a learned tensor got no gradient"
    assert any(p.grad.abs().sum() > 0 for p in params), f"{method}: every gradient is zero"
    assert all(p.grad is None for p in module.clip.model.parameters())
    assert not any(p.requires_grad for p in module.clip.model.parameters())
    torch.optim.SGD(params, lr=1.0).step()
    assert all(torch.equal(frozen[k], v) for k, v in module.clip.model.state_dict().items())


@pytest.mark.parametrize("method", CONFIGS)
def test_rebinds_to_another_class_set_unless_class_bound(method, shapes_dir, tmp_path):
    setup = _setup(method, shapes_dir, tmp_path)
    module = setup.module.eval()
    features = module.image_features(_batch(setup, 3))
    if module.method.capabilities.class_bound:
        with pytest.raises(UserError, match="another class set|other classes"):
            module.set_task(OTHER_CLASSES)
        return
    module.set_task(OTHER_CLASSES)
    with torch.no_grad():
        module._start_eval()
        logits = module._eval_logits(features)
    assert logits.shape[1:] == (3, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("method", CONFIGS)
def test_the_feature_cache_changes_no_number(trained, method):
    on, off = RunFolder(trained(method, cache=True)), RunFolder(trained(method, cache=False))
    assert on.result()["metrics"] == off.result()["metrics"]


@pytest.mark.parametrize("method", CONFIGS)
def test_exports_exactly_when_the_method_says_it_can(trained, method, tmp_path):
    folder = RunFolder(trained(method))
    setup = build(folder.config())
    kind = setup.module.method.export_kind
    out = tmp_path / "head.safetensors"
    if kind is None:
        with pytest.raises(UserError, match="evaluate it with `prompt-tuning eval RUN`"):
            export_head(folder.path, out)
        assert not out.exists()
        return
    head = export_head(folder.path, out)
    assert head.meta["kind"] == {"class_weights": "class_text_features", "tensors": "learned_tensors"}[kind]
    if kind == "tensors":
        assert head.text_features is None and head.tensors
        return
    if setup.module.trainable:
        setup.module.load_state_dict(load_checkpoint(folder.last_checkpoint)["state_dict"])
    features = setup.module.image_features(_batch(setup)).float()
    with torch.no_grad():
        setup.module.eval()
        want = setup.module(features).logits[0]
    assert torch.allclose(head.logits(features), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", CONFIGS)
def test_the_shared_prefix_pass_equals_the_full_pass(method, shapes_dir, tmp_path):
    setup = _setup(method, shapes_dir, tmp_path)
    context = setup.module.method
    if not isinstance(context, Context):
        pytest.skip(f"{method} is a head: it has no text pass")
    context.eval()
    features = F.normalize(setup.module.image_features(_batch(setup, 2)), dim=-1)
    torch.manual_seed(0)
    prompts = context(features)
    if not prompts.shared_prefix:
        pytest.skip(f"{method}'s prompts share no prefix")
    full, shared = setup.clip.with_options(shared_prefix=False), setup.clip.with_options(shared_prefix=True)
    with torch.no_grad():
        a = full.encode_prompts(prompts.embeddings, prompts.eot_index, prompts.text_hook, prompts.shared_prefix)
        b = shared.encode_prompts(prompts.embeddings, prompts.eot_index, prompts.text_hook, prompts.shared_prefix)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * a.abs().max()), f"{method}: {(a - b).abs().max()}"


@pytest.mark.parametrize("method", CONFIGS)
def test_scores_losses_and_probabilities_are_fp32_under_bf16_autocast(method, shapes_dir, tmp_path):
    setup = _setup(method, shapes_dir, tmp_path)
    module, batch = setup.module, _batch(setup)
    full = (torch.float32, torch.float64)  # the linear probe scores in scikit-learn's float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module.train()
        outputs, inputs = module.training_outputs(batch)
        terms = module.loss_terms(outputs, batch["label"], inputs)
        module.eval()
        module._start_eval()
        with torch.no_grad():
            logits = module._eval_logits(module.image_features(batch))
            probs = module.predict_proba(logits)
    assert outputs.logits.dtype in full and logits.dtype in full and probs.dtype in full
    assert outputs.image_features.dtype == torch.float32
    assert outputs.text_features is None or outputs.text_features.dtype == torch.float32
    assert all(t.dtype in full for t in terms.values()), {k: t.dtype for k, t in terms.items()}


@pytest.mark.parametrize("method", CONFIGS)
def test_capabilities_agree_with_what_the_method_does(method, shapes_dir, tmp_path):
    setup = _setup(method, shapes_dir, tmp_path)
    method_ = setup.module.method.eval()
    caps = method_.capabilities
    assert caps.image_tower == (method_.image_hook() is not None)
    features = F.normalize(setup.module.image_features(_batch(setup, 3)), dim=-1)
    if isinstance(method_, Context):
        prompts = method_(features)
        assert prompts.embeddings.shape[1] == len(setup.train_task.classnames)
        if caps.conditional:  # evaluation makes sets_per_image sets for each of the 3 images
            assert prompts.per_image and prompts.embeddings.shape[0] == caps.sets_per_image * 3
        else:
            assert not prompts.per_image
        assert (method_.class_features(setup.clip) is None) == (caps.conditional or caps.stochastic)
    else:
        assert method_.class_features(setup.clip) is None and method_.export_kind is None
    if caps.fits:
        assert setup.fit_data is not None and setup.fit_data.train.shape[0] == max(1, caps.fit_views)
