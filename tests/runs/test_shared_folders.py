"""Files on a shared machine: every file the toolkit writes (through its atomic writer: results, configs,
few-shot splits, checkpoints, locks) gets the permissions the umask gives (``0o666 & ~umask``), not the private
0600 of a temporary file, and its folders follow the umask too; so a colleague can read a few-shot split written
into a shared dataset folder."""

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.core.files import atomic_path, umask, write_json
from prompt_tuning.core.locks import FileLock
from prompt_tuning.data.synthetic import make_shapes

MODES = {0o022: 0o644, 0o002: 0o664, 0o077: 0o600}


@pytest.fixture
def with_umask():
    saved = os.umask(0o022)
    os.umask(saved)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", MODES)
def test_the_umask_is_read_without_changing_it(with_umask, mask):
    with_umask(mask)
    assert umask() == mask
    assert os.umask(mask) == mask  # unchanged by reading it


@pytest.mark.parametrize("mask", MODES)
def test_atomic_files_and_locks_get_the_umasks_permissions(with_umask, tmp_path, mask):
    with_umask(mask)
    write_json(tmp_path / "result.json", {"a": 1})
    with atomic_path(tmp_path / "sub" / "last.ckpt") as tmp:
        tmp.write_bytes(b"x")  # a writer that opens the temporary file again (torch.save, safetensors)
    with FileLock(tmp_path / "run") as lock:
        lock_mode = mode(lock.path)
    assert mode(tmp_path / "result.json") == MODES[mask]
    assert mode(tmp_path / "sub" / "last.ckpt") == MODES[mask]
    assert lock_mode == MODES[mask]
    assert mode(tmp_path / "sub") == 0o777 & ~mask


@pytest.mark.parametrize("mask", [0o002, 0o077])
def test_a_runs_files_and_its_few_shot_split_follow_the_umask(with_umask, tmp_path, mask):
    data = tmp_path / "data"
    make_shapes(data / "shapes", n_train=2, n_val=1, n_test=2)
    with_umask(mask)
    out = tmp_path / "run"
    assert main(["train", "model=tiny", "dataset=shapes", f"data.root={data}", "method=coop", "protocol.shots=1",
                 "optim.max_epochs=1", "runtime.progress=false", f"output_dir={out}"]) == 0
    written = [*out.rglob("*"), *(data / "shapes" / "split_fewshot").rglob("*")]
    files = [p for p in written if p.is_file()]
    names = {p.name for p in files}
    assert {"result.json", "config.yaml", "last.ckpt", "metrics.csv", "shot_1-seed_1.json"} <= names, names
    assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(MODES[mask]) for p in files}
    folders = [p for p in written if p.is_dir()] + [data / "shapes" / "split_fewshot"]
    assert {str(p): oct(mode(p)) for p in folders} == {str(p): oct(0o777 & ~mask) for p in folders}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as a second user")
def test_a_second_user_reads_the_few_shot_split_another_wrote(with_umask):
    """One user (umask 0o022) draws a few-shot split into a shared dataset folder; another user (nobody) reads it."""
    shared = Path(tempfile.mkdtemp(prefix="pt-shared-"))
    try:
        os.chmod(shared, 0o755)
        make_shapes(shared / "shapes", n_train=2, n_val=1, n_test=2)
        with_umask(0o022)
        assert main(["train", "model=tiny", "dataset=shapes", f"data.root={shared}", "method=coop",
                     "protocol.shots=1", "optim.max_epochs=1", "runtime.progress=false",
                     f"output_dir={shared / 'run'}"]) == 0
        split = shared / "shapes" / "split_fewshot" / "shot_1-seed_1.json"
        read = subprocess.run(["cat", str(split)], user=65534, group=65534, capture_output=True, text=True)
        assert read.returncode == 0, read.stderr
        assert json.loads(read.stdout)["shots"] == 1
    finally:
        shutil.rmtree(shared, ignore_errors=True)
