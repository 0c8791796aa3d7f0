"""`prompt-tuning export`: the learned classifier of a run, usable without this package, predicts what `eval`
predicts; conditional methods export their learned tensors instead."""

import json

import pytest
import torch
from safetensors import safe_open

import prompt_tuning
from prompt_tuning.apps.cli import main
from prompt_tuning.core.errors import UserError
from prompt_tuning.data.features import encode_items
from prompt_tuning.data.transforms import eval_transform
from prompt_tuning.runs.build import build
from prompt_tuning.runs.folder import RunFolder
from prompt_tuning.runs.runner import load_method_state


def _train(shapes_dir, out, method="coop"):
    assert main(["train", "model=tiny", f"dataset={shapes_dir}", f"method={method}", "protocol.shots=2",
                 "optim.max_epochs=3", "optim.lr=0.05", "runtime.progress=false", f"output_dir={out}"]) == 0
    return json.loads((out / "result.json").read_text())


def test_exported_head_predicts_what_eval_predicts(shapes_dir, tmp_path, capsys):
    run = tmp_path / "run"
    result = _train(shapes_dir, run)
    assert main(["export", str(run), "--out", str(tmp_path / "head.safetensors")]) == 0
    assert "9 classes, class weights" in capsys.readouterr().out
    head = prompt_tuning.load_head(tmp_path / "head.safetensors")

    setup = build(RunFolder(run).config())  # the run rebuilt as eval rebuilds it, with its checkpoint
    load_method_state(setup.module, RunFolder(run).last_checkpoint)
    assert head.meta["image_tower_digest"] == setup.clip.image_tower_digest()
    _, items = setup.eval_sets["all"]
    features = encode_items(setup.clip, items, eval_transform(setup.clip.preprocess), progress=False)
    labels = torch.tensor([it.label for it in items])
    predicted = head.logits(features).argmax(-1)
    with torch.no_grad():
        setup.module.eval()
        setup.module._start_eval()
        reference = setup.module.predict_proba(setup.module._eval_logits(features)).argmax(-1)
    assert torch.equal(predicted, reference)
    assert 100.0 * (predicted == labels).float().mean().item() == pytest.approx(result["metrics"]["acc"], abs=1e-4)
    assert head.classnames[:2] == ["red circle", "red square"] and head.logit_scale == pytest.approx(
        float(setup.clip.logit_scale))


def test_head_needs_nothing_but_safetensors_and_torch(shapes_dir, tmp_path):
    run = tmp_path / "run"
    _train(shapes_dir, run)
    (tmp_path / "classes.txt").write_text("red circle\nblue square\ngreen triangle\n")
    assert main(["export", str(run), "--out", str(tmp_path / "h.safetensors"),
                 "--classes", str(tmp_path / "classes.txt")]) == 0
    with safe_open(str(tmp_path / "h.safetensors"), framework="pt") as f:  # what a user without us reads
        meta = f.metadata()
        weights = f.get_tensor("text_features")
    assert json.loads(meta["classnames"]) == ["red circle", "blue square", "green triangle"]
    assert weights.shape == (3, 32) and torch.allclose(weights.norm(dim=-1), torch.ones(3))
    assert meta["model"] == "tiny" and "logit_scale" in meta["note"]


def test_conditional_prompts_export_their_tensors_with_a_note(shapes_dir, tmp_path, capsys):
    run = tmp_path / "run"
    _train(shapes_dir, run, method="cocoop")
    assert main(["export", str(run), "--out", str(tmp_path / "c.safetensors")]) == 0
    assert "need prompt-tuning to classify" in capsys.readouterr().out
    head = prompt_tuning.load_head(tmp_path / "c.safetensors")
    assert head.text_features is None and "method.ctx" in head.tensors
    with pytest.raises(UserError, match="use prompt-tuning eval"):
        head.logits(torch.randn(2, 32))


def test_a_file_that_is_not_a_head_is_one_line(tmp_path, capsys):
    (tmp_path / "x.safetensors").write_bytes(b"nonsense")
    with pytest.raises(UserError, match="is not a head file"):
        prompt_tuning.load_head(tmp_path / "x.safetensors")


def _readme_code(head_file, image: str) -> str:
    """The README's open_clip-only example, reading ``head_file`` and classifying ``image``."""
    import re

    from tests.conftest import REPO

    section = (REPO / "README.md").read_text().split("## Using learned prompts elsewhere", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return code.replace('"head.safetensors"', repr(str(head_file))).replace('"cat.jpg"', repr(image))


@pytest.mark.parametrize("arch", ["tiny", "custom_text"])
def test_readme_example_rebuilds_an_architecture_of_ones_own_with_open_clip_alone(shapes_dir, tmp_path, capsys,
                                                                                   arch):
    from tests.conftest import TINY_ARCH

    model = "model=tiny"  # the package's tiny config: an architecture dict with random weights
    if arch == "custom_text":  # a JSON file of one's own, a CustomTextCLIP with another width
        config = {**json.loads(TINY_ARCH.read_text()), "custom_text": True}
        config["text_cfg"] = {**config["text_cfg"], "width": 48}
        (tmp_path / "mine.json").write_text(json.dumps(config))
        model = f"model={tmp_path / 'mine.json'}"
    run = tmp_path / "run"
    assert main(["train", model, f"dataset={shapes_dir}", "method=coop", "protocol.shots=2", "optim.max_epochs=2",
                 "optim.lr=0.05", "seed=3", "runtime.progress=false", f"output_dir={run}"]) == 0
    head_file = tmp_path / "head.safetensors"
    assert main(["export", str(run), "--out", str(head_file)]) == 0
    setup = build(RunFolder(run).config())
    _, items = setup.eval_sets["all"]
    scope: dict = {}
    capsys.readouterr()
    for item in items[:3]:
        exec(compile(_readme_code(head_file, item.path), "README.md", "exec"), scope)
        head = prompt_tuning.load_head(head_file)
        feature = encode_items(setup.clip, [item], eval_transform(setup.clip.preprocess), progress=False)
        assert capsys.readouterr().out.strip() == head.classnames[int(head.logits(feature).argmax())]
    rebuilt, ran = scope["model"].state_dict(), setup.clip.model.state_dict()  # the very weights the run used
    assert rebuilt.keys() == ran.keys() and all(torch.equal(rebuilt[k], ran[k]) for k in ran)
    assert type(scope["model"]).__name__ == ("CustomTextCLIP" if arch == "custom_text" else "CLIP")
    meta = prompt_tuning.load_head(head_file).meta
    assert json.loads(meta["open_clip_config"])["quick_gelu"] is False and meta["init_seed"] == "3"


def test_readme_example_builds_a_named_architecture_with_its_weights(shapes_dir, tmp_path, monkeypatch, capsys):
    import open_clip

    run = tmp_path / "run"
    _train(shapes_dir, run)
    head_file = tmp_path / "head.safetensors"
    assert main(["export", str(run), "--out", str(head_file)]) == 0
    setup = build(RunFolder(run).config())
    _, items = setup.eval_sets["all"]
    seen = {}

    def create(name, pretrained):  # open_clip would download the weights; here they are the run's tiny model
        seen.update(name=name, pretrained=pretrained)
        return setup.clip.model

    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda name: ["", "openai"])
    monkeypatch.setattr(open_clip, "create_model", create)
    capsys.readouterr()
    exec(compile(_readme_code(head_file, items[0].path), "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    head = prompt_tuning.load_head(head_file)
    feature = encode_items(setup.clip, items[:1], eval_transform(setup.clip.preprocess), progress=False)
    assert printed == head.classnames[int(head.logits(feature).argmax())]
    assert seen == {"name": "tiny", "pretrained": ""}


def test_an_exported_file_holds_only_tensors_and_text(shapes_dir, tmp_path):
    """safetensors: a JSON header of tensor shapes and string metadata, then raw tensor bytes; nothing to unpickle."""
    import struct

    run = tmp_path / "run"
    _train(shapes_dir, run)
    head_file = tmp_path / "head.safetensors"
    assert main(["export", str(run), "--out", str(head_file)]) == 0
    raw = head_file.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    meta = header.pop("__metadata__")
    assert all(isinstance(v, str) for v in meta.values())
    assert {spec["dtype"] for spec in header.values()} == {"F32"}
    assert 8 + size + sum(end - begin for begin, end in (s["data_offsets"] for s in header.values())) == len(raw)
    assert json.loads(meta["open_clip_config"])["vision_cfg"]["image_size"] == 32
