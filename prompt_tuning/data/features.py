"""On-disk cache of frozen image features.

Text-side prompt methods never change the image tower, so each image's feature under a given transform is a
constant: it is computed once and reused across methods, seeds, shots and evaluations. A cache entry is keyed by
everything that determines its numbers: a digest of the image tower (its module structure, activation included,
and every weight and buffer, so two random initialisations never share an entry), the device kind, the transform
(its full ``repr``), the view index (and for augmented views the seed they are drawn with), the stored dtype and,
per image in order, its path, size and modification time (an edited image is encoded again). Entries hold the
encoder's *unnormalised* output: prompt methods normalise it when they score (the same numbers as encoding on the
fly), heads such as the linear probe and Tip-Adapter's cache keys use it as the authors do. An entry is written
to a temporary file and renamed (never half-written), and its shape is checked when read (a damaged entry is
recomputed). Each use logs one line, ``built`` or ``reused``, with the key's short digest.

Training with augmentation can use ``cache_views: N`` pre-computed augmented views per image (image ``i`` of view
``v`` is drawn with a seed derived from ``(seed, v, i)``, so it is reproducible image by image); each training step
then picks one view per image. Methods that prompt the image tower train on the same views regenerated as images,
and read the *frozen* features of those views (for their objective) from the cache. ``cache_views: 0`` keeps the
reference behaviour: a fresh augmentation, through the image encoder, at every step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.core.errors import UserError
from prompt_tuning.core.files import atomic_path, remove_stale_temporaries
from prompt_tuning.core.locks import FileLock
from prompt_tuning.data.datamodule import ViewDataset
from prompt_tuning.data.datasets import Item

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16}


class FeatureCache:
    """Frozen image features on disk.

    Args:
        root: cache folder.
        dtype: ``float32`` (features identical to computing them on the fly) or ``float16`` (half the disk).
        batch_size: images per encoder pass when filling the cache.
        progress: show a progress bar while encoding.
    """

    def __init__(self, root: str | os.PathLike, dtype: str = "float32", batch_size: int = 100, progress: bool = True):
        self.root = Path(root).expanduser()
        if dtype not in DTYPES:
            raise UserError(f"data.feature_dtype={dtype!r}: choose {' or '.join(DTYPES)}")
        self.dtype = DTYPES[dtype]
        self.disabled: str | None = None  # why entries are not stored (an unwritable cache), said once
        self.batch_size = batch_size
        self.progress = progress
        self.hits = 0
        self.misses = 0

    def key(self, clip: FrozenCLIP, items: list[Item], transform: Callable, view: int, seed: int = 0) -> str:
        """The entry name: a hash of the image tower's digest, the device kind, the transform, the view (and the
        seed of an augmented view), the stored dtype and each image's path, size, modification and change times
        and inode (`images_digest`)."""
        ident = json.dumps({
            "dtype": str(self.dtype),
            "stored": "unnormalised, with a digest",
            "image_tower": clip.image_tower_digest(),
            "device": clip.device.type,
            "transform": repr(transform),
            "view": view,
            "seed": seed if view else None,  # view 0 is the deterministic evaluation transform
            "view_seeding": "per-image, mixed" if view else None,  # data.datamodule.view_seed
            "images": images_digest(items),
        }, sort_keys=True)
        return hashlib.sha256(ident.encode()).hexdigest()[:24]

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def _read(self, path: Path, n: int, dim: int) -> torch.Tensor | None:
        """An entry whose shape and digest check out; a damaged one (unreadable, another shape, flipped bytes) is
        None, said in one line, and built again."""
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            features = entry["features"]
            good = features.shape == (n, dim) and entry["sha256"] == _sha256(features)
        except Exception:  # noqa: BLE001 - whatever is wrong with it, it is built again
            good = False
        if not good:
            log.warning("feature cache: entry %s is damaged: built again", path.stem[:8])
            return None
        return features

    def _write(self, path: Path, features: torch.Tensor) -> None:
        """Store an entry with its digest; a cache that cannot be written (read-only, full) is said once and the
        run goes on without storing."""
        if self.disabled:
            return
        try:
            with atomic_path(path) as tmp:
                try:
                    torch.save({"features": features, "sha256": _sha256(features)}, tmp)
                except RuntimeError as e:  # torch's "enforce fail ..." of a full disk
                    raise UserError(f"cannot write {path}: {' '.join(str(e).split())[:200]}") from e
        except UserError as e:
            self._disable(str(e))

    def features(self, clip: FrozenCLIP, items: list[Item], transform: Callable, view: int = 0,
                 seed: int = 0) -> torch.Tensor:
        """Unnormalised features ``(N, d)`` of ``items`` under ``transform`` (``view`` > 0: augmented view)."""
        key = self.key(clip, items, transform, view, seed)
        path = self._path(key)
        what = f"{len(items)} images" + (f", view {view}" if view else "")
        cached = self._read(path, len(items), clip.embed_dim)
        if cached is not None:
            self.hits += 1
            log.info("feature cache: reused %s (%s)", key[:8], what)
            return cached.float()
        # one process builds an entry, the others wait for it
        lock = FileLock(path.parent, f"{key}.building", "feature cache entry", "is being built by")
        try:
            if not self.disabled:
                lock.wait(f"building feature cache entry {key[:8]}")
        except UserError as e:  # an unwritable cache folder: the run goes on without storing entries
            self._disable(str(e))
        try:
            cached = self._read(path, len(items), clip.embed_dim)  # built while this process waited
            if cached is not None:
                self.hits += 1
                log.info("feature cache: reused %s (%s), built by another process", key[:8], what)
                return cached.float()
            self.misses += 1
            remove_stale_temporaries(path.parent)  # leftovers of writes killed in this part of the cache
            features = encode_items(clip, items, transform, self.batch_size, seed=view_seed_of(seed, view),
                                    desc=f"image features (view {view})" if view else "image features",
                                    progress=self.progress)
            self._write(path, features.to(self.dtype))
        finally:
            lock.release()
        if not self.disabled:
            log.info("feature cache: built %s (%s) in %s", key[:8], what, self.root)
        return features.to(self.dtype).float()

    def _disable(self, why: str) -> None:
        if not self.disabled:
            self.disabled = why
            log.warning("feature cache: %s; the run goes on computing image features without storing them "
                        "(set runtime.cache_dir or PT_CACHE_DIR to a writable folder)", why)


def _sha256(features: torch.Tensor) -> str:
    t = features.detach().cpu().contiguous()
    return hashlib.sha256(t.view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def view_seed_of(seed: int, view: int) -> int:
    """The seed view ``view`` of a run seeded ``seed`` is drawn with (images then derive theirs from it)."""
    return seed * 1009 + view


def images_digest(items: list[Item]) -> str:
    """A digest of the image list in order: each image's path, size, modification time, change time and inode
    (ns). ``touch -r`` can give a replaced image its old size and modification time, but not its change time nor,
    when it is another file, its inode; all come from the one ``stat`` per image the key already makes."""
    h = hashlib.sha256()
    for it in items:
        try:
            st = os.stat(it.path)
        except OSError as e:
            raise UserError(f"image {it.path} cannot be read: {e.strerror}") from e
        h.update(f"{it.path}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}\t{st.st_ino}\n".encode())
    return h.hexdigest()


def encode_items(clip: FrozenCLIP, items: list[Item], transform: Callable, batch_size: int = 100, seed: int = 0,
                 desc: str = "image features", progress: bool = True) -> torch.Tensor:
    """Unnormalised features ``(N, d)`` of the frozen image encoder over ``items`` in order; a random transform of
    image ``i`` draws from torch's generator seeded with ``view_seed(seed, i)`` (`ViewDataset`), so a view can be
    regenerated image by image (the caller's random state is left untouched)."""
    loader = DataLoader(ViewDataset(items, transform, [seed]), batch_size=batch_size, shuffle=False, num_workers=0)
    out = []
    with torch.random.fork_rng(devices=[]):
        for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch"):  # its last state stays: 100%
            out.append(clip.encode_images(batch["image"], normalize=False).cpu())
    return torch.cat(out) if out else torch.empty(0, clip.embed_dim)


class FeatureDataset(Dataset):
    """Cached features as a dataset: ``{"features", "label"}``; with several views ``(V, N, d)`` each access
    picks one view at random (from torch's seeded generator)."""

    def __init__(self, views: torch.Tensor, labels: list[int]):
        self.views = views if views.dim() == 3 else views.unsqueeze(0)
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return self.views.shape[1]

    def __getitem__(self, index: int) -> dict:
        v = int(torch.randint(self.views.shape[0], (1,))) if self.views.shape[0] > 1 else 0
        return {"features": self.views[v, index], "label": self.labels[index]}
