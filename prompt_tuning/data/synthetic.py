"""A procedurally generated image-classification dataset ("red circle", "blue square", ...).

It needs no download, so the demo and the tests can run the whole pipeline offline. It is written in the CoOp
benchmark layout: ``root/images/<class>/<n>.png`` plus ``root/split_shapes.json``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")


def _draw(shape: str, colour: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(0, 40) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.28, 0.45) * size
    cx, cy = (rng.uniform(r, size - r) for _ in range(2))
    jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=jitter)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=jitter)
    return image


def make_shapes(
    root: str | os.PathLike,
    colours: tuple[str, ...] = ("red", "green", "blue"),
    shapes: tuple[str, ...] = SHAPES,
    n_train: int = 16,
    n_val: int = 4,
    n_test: int = 20,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write the dataset under ``root`` and return ``root``; the same arguments write the same images.

    Classes are ``"<colour> <shape>"`` in the order colours x shapes; labels follow that order.
    """
    root = Path(root)
    rng = random.Random(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    classes = [(c, s) for c in colours for s in shapes]
    for label, (colour, shape) in enumerate(classes):
        name = f"{colour} {shape}"
        folder = root / "images" / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        index = 0
        for part, count in (("train", n_train), ("val", n_val), ("test", n_test)):
            for _ in range(count):
                rel = f"{folder.name}/{index:04d}.png"
                _draw(shape, COLOURS[colour], size, rng).save(root / "images" / rel)
                split[part].append([rel, label, name])
                index += 1
    tmp = root / "split_shapes.json.tmp"
    tmp.write_text(json.dumps(split))
    tmp.replace(root / "split_shapes.json")
    return root
