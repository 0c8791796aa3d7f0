"""One run on several processes (Lightning DDP, gloo on CPU): the same batches, gradients and numbers as one."""

import json
import os
import subprocess
import sys

import pytest
import torch

from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datamodule import EpochShuffle, ReferenceBatches, SeededSamples, Shard


@pytest.mark.parametrize("n,batch,drop_last", [(36, 8, True), (27, 10, False), (40, 8, False)])
def test_rank_slices_make_up_the_reference_batches(n, batch, drop_last):
    one = ReferenceBatches(n, batch, seed=3, drop_last=drop_last)
    two = [ReferenceBatches(n, batch, seed=3, drop_last=drop_last, rank=r, world=2) for r in range(2)]
    for epoch in (0, 5):
        for s in (one, *two):
            s.set_epoch(epoch)
        reference = list(one)
        parts = list(zip(*two))
        assert len(parts) == len(reference) == len(one) == len(two[0])
        assert [a + b for a, b in parts] == reference  # same images, same per-image seeds, same global batches
        flat = [i for b in reference for i, _ in b]
        order = EpochShuffle(n, 3)
        order.set_epoch(epoch)
        assert flat == list(order)[:len(flat)]
    assert len(reference[-1]) == (n % batch if n % batch and not drop_last else batch)


def test_sample_seeds_depend_on_epoch_and_image_not_on_batching():
    a, b = ReferenceBatches(20, 4, seed=1), ReferenceBatches(20, 10, seed=1, rank=1, world=2)
    seeds_a = dict(x for batch in a for x in batch)
    seeds_b = dict(x for batch in b for x in batch)
    assert all(seeds_a[i] == s for i, s in seeds_b.items())
    a.set_epoch(1)
    assert all(seeds_a[i] != s for batch in a for i, s in batch)


def test_seeded_samples_draw_from_their_own_seed_and_leave_the_global_generator_alone():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3) + i

    ds = SeededSamples(Noise())
    torch.manual_seed(0)
    first = ds[(2, 77)]
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(ds[(2, 77)], first)
    assert not torch.equal(ds[(2, 78)], first)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after)  # the global stream did not move


def test_batches_that_cannot_be_split_are_refused():
    with pytest.raises(UserError, match=r"data.batch_size=9 cannot be split over trainer.devices=2"):
        ReferenceBatches(30, 9, seed=1, world=2)
    with pytest.raises(UserError, match=r"last training batch holds 1 image\(s\), fewer than the 2 devices"):
        ReferenceBatches(17, 8, seed=1, drop_last=False, world=2)


def test_evaluation_shards_cover_every_image_once():
    shards = [list(Shard(23, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(23))
    assert [len(Shard(23, r, 3)) for r in range(3)] == [len(s) for s in shards]


def _train(tmp_path, shapes_dir, name, *extra):
    out = tmp_path / name
    args = ["model=tiny", "dataset=shapes", f"dataset.init_args.root={shapes_dir}", "trainer.accelerator=cpu",
            "runtime.progress=false", "optim.max_epochs=3", "optim.lr=0.02", f"output_dir={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "prompt_tuning.apps.cli", "train", *args], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return result, state, proc


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [
    ("coop", ["protocol.shots=4", "data.batch_size=8"]),
    # ProGrad averages both gradients over the processes before projecting; an uneven last batch (27 images,
    # batch 10: the last 7 split 3 + 4) is weighted by each process's share of it
    ("prograd", ["protocol.shots=3", "data.batch_size=10", "data.drop_last=false"]),
])
def test_ddp_on_two_processes_equals_one_process(tmp_path, shapes_dir, method, extra):
    one, state_one, _ = _train(tmp_path, shapes_dir, "one", f"method={method}", *extra)
    two, state_two, proc = _train(tmp_path, shapes_dir, "two", f"method={method}", *extra, "trainer.devices=2",
                                  "trainer.strategy=ddp")
    assert proc.stdout.count('"acc"') == 1  # rank 0 alone reports
    assert one["metrics"] == two["metrics"]
    assert state_one.keys() == state_two.keys()
    for key, a in state_one.items():
        # the per-process means and the all-reduce add in another order than one process's mean over the batch:
        # each step's gradient differs by float rounding (~1e-7 relative), which 3 epochs of SGD carry on; the
        # context vectors agree to well within 1e-5 of their largest entry (measured: 8e-7 and 1.6e-6)
        assert (a - state_two[key]).abs().max() <= 1e-5 * a.abs().max(), key
    assert not torch.equal(state_one["method.ctx"], torch.zeros_like(state_one["method.ctx"]))
    assert (tmp_path / "two" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "two" / ".lock").exists()


def test_a_batch_that_cannot_be_split_over_the_devices_fails_before_anything_is_written(tmp_path, shapes_dir):
    from prompt_tuning.config.compose import compose
    from prompt_tuning.runs.runner import train

    out = tmp_path / "run"
    cfg = compose(["model=tiny", "dataset=shapes", f"dataset.init_args.root={shapes_dir}", "trainer.devices=2",
                   "trainer.strategy=ddp", "data.batch_size=7", f"output_dir={out}", "runtime.progress=false"])
    with pytest.raises(UserError, match=r"data.batch_size=7 cannot be split over trainer.devices=2"):
        train(cfg)
    assert not out.exists()
