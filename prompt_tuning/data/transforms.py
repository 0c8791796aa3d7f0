"""Image transforms: CLIP's evaluation preprocessing and CoOp's training augmentation.

CoOp trains with ``random_resized_crop`` (scale 0.08-1, bicubic) and ``random_flip``, then normalises with
CLIP's statistics; evaluation resizes the shorter side, centre-crops and normalises (Dassl's defaults).
"""

from __future__ import annotations

from torchvision import transforms as T

from prompt_tuning.backbone import Preprocess

_MODES = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def eval_transform(pre: Preprocess) -> T.Compose:
    """Resize the shorter side to the model's size, centre-crop, normalise."""
    mode = _MODES.get(pre.interpolation, T.InterpolationMode.BICUBIC)
    return T.Compose([
        T.Resize(pre.image_size, interpolation=mode),
        T.CenterCrop(pre.image_size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def train_transform(pre: Preprocess, crop_scale: tuple[float, float] = (0.08, 1.0)) -> T.Compose:
    """CoOp's augmentation: random resized crop, horizontal flip, normalise."""
    mode = _MODES.get(pre.interpolation, T.InterpolationMode.BICUBIC)
    return T.Compose([
        T.RandomResizedCrop(pre.image_size, scale=tuple(crop_scale), interpolation=mode),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])
