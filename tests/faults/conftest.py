"""Fixtures of the fault-injection suite: small and read-only file systems (tmpfs mounts, which need root; the
tests that use them skip elsewhere), and a short run on the shapes data."""

import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_ARCH


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (root only): {done.stderr.decode().strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a folder on a tmpfs of ``size`` (e.g. "24k"), unmounted after the test."""
    mounts = []

    def make(size: str, name: str = "disk") -> Path:
        path = tmp_path / name
        _mount(path, size)
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        _umount(path)


@pytest.fixture
def read_only(tmp_path):
    """``read_only(fill=None)``: a folder on a read-only tmpfs; ``fill(path)`` writes into it first."""
    mounts = []

    def make(fill=None, name: str = "ro") -> Path:
        path = tmp_path / name
        _mount(path, "4m")
        mounts.append(path)
        if fill is not None:
            fill(path)
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return path

    yield make
    for path in mounts:
        _umount(path)


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    """A short CoOp run on the shapes data (4 shots, 3 epochs)."""
    return ["train", f"model={TINY_ARCH}", f"dataset={data}", "method=coop", "protocol.shots=4",
            "optim.max_epochs=3", "data.batch_size=8", "runtime.progress=false", f"output_dir={out}", *extra]
