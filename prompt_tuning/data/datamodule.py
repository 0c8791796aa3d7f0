"""LightningDataModule over already-chosen subsets (the protocol runs before, as a pure function)."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datasets import Item


class ImageDataset(Dataset):
    """Loads ``items`` as ``{"image": tensor, "label": int}``; an unreadable image raises naming its path."""

    def __init__(self, items: list[Item], transform: Callable):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        try:
            with Image.open(item.path) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot read image {item.path}: {e}") from e
        return {"image": self.transform(image), "label": item.label}


def mix(*values: int) -> int:
    """A 63-bit seed from integers, scrambled (splitmix64): neighbouring images or epochs get unrelated seeds
    (torch's generator seeded with consecutive integers starts with correlated draws)."""
    z = 0
    for v in values:
        z = (z + 0x9E3779B97F4A7C15 + v) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z >> 1


def view_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s augmentation in a view drawn with ``seed`` (independent of batching)."""
    return mix(seed, index)


class ViewDataset(ImageDataset):
    """Fixed augmented views: image ``i`` of view ``v`` is transformed with torch's generator seeded from
    ``(seeds[v], i)``, so any process regenerates exactly the images whose features the cache holds.

    Args:
        items, transform: as `ImageDataset`.
        seeds: one seed per view; each access picks a view at random (torch's seeded generator).
        frozen: optional ``(V, N, d)`` frozen features of the same views, returned as ``frozen``.
    """

    def __init__(self, items: list[Item], transform: Callable, seeds: list[int], frozen=None):
        super().__init__(items, transform)
        self.seeds = list(seeds)
        self.frozen = frozen

    def view(self, v: int, index: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seeds[v], index))
            out = super().__getitem__(index)
        if self.frozen is not None:
            out["frozen"] = self.frozen[v, index]
        return out

    def __getitem__(self, index: int) -> dict:
        v = int(torch.randint(len(self.seeds), (1,))) if len(self.seeds) > 1 else 0
        return self.view(v, index)


class EpochShuffle(Sampler):
    """A random order drawn from ``(seed, epoch)`` alone (Lightning calls `set_epoch`), so a run resumed at
    epoch e shuffles exactly as the uninterrupted run did."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of every random draw made while loading training image ``index`` in ``epoch``."""
    return mix(seed, epoch, index)


class ReferenceBatches(Sampler):
    """Training batches of one process: the `EpochShuffle` order cut into global batches of ``batch_size``
    (the reference order of a single-process run), of which process ``rank`` of ``world`` takes its slice.

    Each element is ``(index, seed)``: the image and the seed of its random draws (`SeededSamples`), which
    depend on the epoch and the image alone. So the images, their augmentations and each global batch are the
    same on any number of processes, and the processes leave the global random generator untouched.
    """

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool = True, rank: int = 0, world: int = 1):
        check_split(batch_size, world)
        self.order = EpochShuffle(n, seed)
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.drop_last = drop_last and n >= batch_size
        self.rank, self.world = rank, world
        last = self.global_sizes()[-1] if self.global_sizes() else world
        if last < world:
            raise UserError(f"the last training batch holds {last} image(s), fewer than the {world} devices: set "
                            "data.drop_last=true or choose data.batch_size so that the last batch can be split")

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def global_sizes(self) -> list[int]:
        """The size of each global batch of an epoch."""
        full, rest = divmod(self.n, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest and not self.drop_last else [])

    def __len__(self) -> int:
        return len(self.global_sizes())

    def __iter__(self):
        order, epoch, start = list(self.order), self.order.epoch, 0
        for size in self.global_sizes():
            batch = order[start:start + size]
            start += size
            cut = [size * r // self.world for r in range(self.world + 1)]  # an uneven last batch: near-equal
            yield [(i, sample_seed(self.seed, epoch, i)) for i in batch[cut[self.rank]:cut[self.rank + 1]]]


def check_split(batch_size: int, devices: int) -> None:
    """Each of ``devices`` processes takes ``batch_size / devices`` images of every batch: it must divide."""
    if batch_size % devices:
        raise UserError(f"data.batch_size={batch_size} cannot be split over trainer.devices={devices}: each "
                        f"device takes batch_size / devices images; choose a multiple of {devices}")


class SeededSamples(Dataset):
    """A training dataset read with `ReferenceBatches`' ``(index, seed)`` keys: each sample's random draws
    (crop, flip, the choice of a cached view) come from its own seed, under a forked generator."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class Shard(Sampler):
    """Evaluation images of process ``rank`` of ``world``: every ``world``-th image, none repeated (the
    metrics sum their counts over processes, so the accuracy is that of the whole set)."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))


class PromptDataModule(pl.LightningDataModule):
    """Train / val / test loaders over ready datasets (images, or cached features).

    Args:
        train, val, test: the datasets of each stage (``test`` is the set currently evaluated).
        batch_size: training batch (CoOp: 32).
        drop_last: drop the last partial training batch when the set holds at least one full batch (Dassl);
            false keeps it (Tip-Adapter-F).
        eval_batch_size: evaluation batch.
        num_workers: loader processes.
        seed: seeds the shuffling generator, so the order of training batches is reproducible.
    """

    def __init__(
        self,
        train: Dataset | None,
        val: Dataset | None,
        test: Dataset | None,
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = True,
    ):
        super().__init__()
        self.train_set, self.val_set, self.test_set = train, val, test
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last

    def _processes(self) -> tuple[int, int]:
        """(rank, world size) of this process (one process without a distributed trainer)."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None or len(dataset) == 0:
            raise UserError("an empty split cannot be loaded; check the dataset and protocol")
        rank, world = self._processes()
        # the loaders draw their workers' base seed from a generator of their own, never from the global one:
        # an iterator created before or after the epoch's reseeding (a resumed run) leaves the model's draws alike
        common = dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                      generator=torch.Generator().manual_seed(self.seed))
        if train:
            batches = ReferenceBatches(len(dataset), self.batch_size, self.seed, self.drop_last, rank, world)
            return DataLoader(SeededSamples(dataset), batch_sampler=batches, **common)
        return DataLoader(dataset, batch_size=self.eval_batch_size,
                          sampler=Shard(len(dataset), rank, world) if world > 1 else None, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
