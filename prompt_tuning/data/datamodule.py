"""LightningDataModule over already-chosen subsets (the protocol runs before, as a pure function)."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

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


class PromptDataModule(pl.LightningDataModule):
    """Train / val / test loaders over fixed item lists.

    Args:
        train, val, test: items of each stage (``test`` is the set currently evaluated).
        train_transform, eval_transform: image transforms.
        batch_size: training batch (CoOp: 32); the last partial batch is dropped when the set holds at
            least one full batch, as in Dassl.
        eval_batch_size: evaluation batch.
        num_workers: loader processes.
        seed: seeds the shuffling generator, so the order of training batches is reproducible.
    """

    def __init__(
        self,
        train: list[Item],
        val: list[Item],
        test: list[Item],
        train_transform: Callable,
        eval_transform: Callable,
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.train_items, self.val_items, self.test_items = train, val, test
        self.train_tf, self.eval_tf = train_transform, eval_transform
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.seed = seed

    def _loader(self, items: list[Item], train: bool) -> DataLoader:
        if not items:
            raise UserError("an empty split cannot be loaded; check the dataset and protocol")
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(
            ImageDataset(items, self.train_tf if train else self.eval_tf),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and len(items) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_items, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_items, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_items, train=False)
