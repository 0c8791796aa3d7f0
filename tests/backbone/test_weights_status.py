"""Where a model's weights come from (`weights_status`: random, a file, the hub cache, a download) and the one
line a failed download ends in."""

import open_clip

from prompt_tuning.apps.cli import main
from tests.helpers import one_line


def test_a_failed_weight_download_is_one_line_saying_what_to_do(data, tmp_path, capsys, monkeypatch):
    def offline(*a, **k):
        raise RuntimeError("Failed to download weights for tag 'openai': cannot reach the hub")

    monkeypatch.setattr(open_clip, "create_model", offline)
    code = main(["train", "model=vit_b16", "method=coop", "dataset=shapes", "protocol.shots=2", f"data.root={data}",
                 f"output_dir={tmp_path / 'run'}"])
    line = one_line(capsys)
    assert code == 2 and "cannot load the weights of model ViT-B-16, pretrained tag 'openai'" in line
    assert "model.pretrained=/path/to/file" in line and "cache" in line
    assert not (tmp_path / "run").exists()


def test_weights_status_finds_weights_in_the_hub_cache_without_downloading(tmp_path):
    from prompt_tuning.backbone import weights_status

    repo = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].rstrip("/")
    assert weights_status("ViT-B-16", "openai", cache_dir=str(tmp_path)) == "download"
    folder = tmp_path / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    (folder / "snapshots" / "abc123" / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    assert weights_status("ViT-B-16", "openai", cache_dir=str(tmp_path)) == "cached"
    (tmp_path / "w.pt").write_bytes(b"x")
    assert weights_status("ViT-B-16", str(tmp_path / "w.pt")) == "file"
    assert weights_status("tiny", None) == "random"
