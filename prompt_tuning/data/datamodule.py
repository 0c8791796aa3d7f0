"""LightningDataModule over already-chosen subsets (the protocol runs before, as a pure function)."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from prompt_tuning.data.datasets import Item
from prompt_tuning.errors import UserError


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


def view_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s augmentation in a view drawn with ``seed`` (independent of batching)."""
    return (seed * 1_000_003 + index) % (2**63)


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

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None or len(dataset) == 0:
            raise UserError("an empty split cannot be loaded; check the dataset and protocol")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochShuffle(len(dataset), self.seed) if train else None,
            drop_last=train and self.drop_last and len(dataset) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
