"""Few-shot subsets cached in the dataset folder, as the reference code does: ``split_fewshot/shot_{K}-seed_{S}``.

A reference pickle (``.pkl``, written by CoOp/Dassl) is read if present, through an unpickler that only
accepts Dassl's ``Datum`` records, so existing folders give exactly the subsets published numbers used. Otherwise
a ``.json`` written by this toolkit is read, or the subset is drawn (`protocols.few_shot_splits`) and saved as
JSON atomically. A read-only dataset folder only costs the cache, with a warning.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import warnings
from collections import Counter
from pathlib import Path

from prompt_tuning.core.errors import UserError
from prompt_tuning.core.files import write_json
from prompt_tuning.data.datasets import Item, check_exist
from prompt_tuning.data.protocols import few_shot, few_shot_splits


class _Datum:
    """Stands in for ``dassl.data.datasets.base_dataset.Datum`` when reading reference pickles."""

    def item(self) -> Item:
        d = self.__dict__
        return Item(str(d.get("_impath", d.get("impath"))), int(d.get("_label", d.get("label"))),
                    str(d.get("_classname", d.get("classname"))))


class _DatumUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith("dassl") and name == "Datum":
            return _Datum
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a few-shot cache")


def _rebase(item: Item, image_dir: Path | None) -> Item:
    """Point a cached absolute path from another machine at this dataset's image folder."""
    path = Path(item.path)
    if path.is_file() or image_dir is None or image_dir.name not in path.parts:
        return item
    parts = path.parts
    tail = parts[len(parts) - 1 - parts[::-1].index(image_dir.name) + 1 :]
    return Item(str(image_dir.joinpath(*tail)), item.label, item.classname)


def _read_pickle(path: Path, image_dir: Path | None) -> dict[str, list[Item]]:
    try:
        with open(path, "rb") as f:
            raw = _DatumUnpickler(f).load()
        return {k: [_rebase(d.item(), image_dir) for d in v] for k, v in raw.items() if k in ("train", "val")}
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, KeyError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"few-shot cache {path} cannot be read ({reason}); delete it to draw the subset again") from e


def _read_json(path: Path, root: Path) -> dict[str, list[Item]]:
    try:
        raw = json.loads(path.read_text())
        return {k: [Item(str(root / p), int(y), c) for p, y, c in raw[k]] for k in ("train", "val") if k in raw}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"few-shot cache {path} is damaged ({e}); delete it to draw the subset again") from e


def _relative(items: list[Item], root: Path) -> list[list]:
    out = []
    for it in items:
        path = Path(it.path)
        out.append([str(path.relative_to(root)) if path.is_relative_to(root) else str(path), it.label, it.classname])
    return out


def _check_drawn_from(subset: list[Item], split: list[Item], path: Path, name: str) -> None:
    """A cached subset must come from the dataset's current split (same images, same labels): a cache left
    over from another split file would otherwise train on other images, even test images, silently."""
    known = {(os.path.abspath(it.path), it.label) for it in split}  # string work only: ImageNet has 1.28M
    strays = [it for it in subset if (os.path.abspath(it.path), it.label) not in known]
    if strays:
        raise UserError(
            f"few-shot cache {path} does not match the dataset's {name} split: {len(strays)} of its "
            f"{len(subset)} images are not in it with the same label (e.g. {strays[0].path}); it was drawn from "
            "another split file: delete it to draw the subset again"
        )


def _check_shots(subset: list[Item], split: list[Item], shots: int, path: Path, name: str) -> None:
    """A cached subset holds ``shots`` distinct images of each class (all of a class's images when it has
    fewer): a hand-edited file with more, fewer or repeated entries would train on another protocol than the run
    records."""
    paths = [os.path.abspath(it.path) for it in subset]
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise UserError(f"few-shot cache {path} lists {dup} more than once in its {name} subset; delete it to draw "
                        "the subset again")
    available = Counter(it.label for it in split)
    for label, n in sorted(Counter(it.label for it in subset).items()):
        want = min(shots, available[label])
        if n != want:
            raise UserError(f"few-shot cache {path} holds {n} {name} images of class {label}, the protocol asks for "
                            f"{want} (shots={shots}); delete it to draw the subset again")
    missing = sorted(set(available) - {it.label for it in subset})
    if missing:
        raise UserError(f"few-shot cache {path} has no {name} image of classes {missing[:5]}; delete it to draw the "
                        "subset again")


def cached_few_shot(dataset, train: list[Item], val: list[Item], shots: int, seed: int) -> tuple[list, list]:
    """The ``shots``-per-class training subset and the ``min(shots, 4)`` validation subset for ``seed``.

    ``dataset`` may define ``fewshot_dir`` (where to cache), ``root``, ``image_dir`` and ``val_is_test``
    (ImageNet: the validation set is the test set and is not subsampled).
    """
    if shots < 1:
        return list(train), list(val)
    val_is_test = getattr(dataset, "val_is_test", False)
    folder = getattr(dataset, "fewshot_dir", None)
    root = Path(getattr(dataset, "root", "."))
    stem = f"shot_{shots}-seed_{seed}"
    if folder is not None:
        folder = Path(folder)
        for path, reader in ((folder / f"{stem}.pkl", _read_pickle), (folder / f"{stem}.json", _read_json)):
            if path.is_file():
                cached = reader(path, getattr(dataset, "image_dir", None) if reader is _read_pickle else root)
                check_exist(cached, str(path))
                _check_drawn_from(cached.get("train", []), train, path, "train")
                _check_shots(cached.get("train", []), train, shots, path, "train")
                if not val_is_test:
                    _check_drawn_from(cached.get("val", []), val, path, "val")
                    _check_shots(cached.get("val", []), val, min(shots, 4), path, "val")
                return cached["train"], val if val_is_test else cached.get("val", val)
    if val_is_test:
        fs_train, fs_val = few_shot(train, shots, random.Random(seed)), list(val)
    else:
        fs_train, fs_val = few_shot_splits(train, val, shots, seed)
    if folder is not None:
        data = {"train": _relative(fs_train, root), "shots": shots, "seed": seed}
        if not val_is_test:
            data["val"] = _relative(fs_val, root)
        try:
            write_json(folder / f"{stem}.json", data)
        except (OSError, UserError) as e:
            warnings.warn(f"could not cache the few-shot subset in {folder}: {e}", stacklevel=2)
    return fs_train, fs_val
