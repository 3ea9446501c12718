"""Image transforms: PIL image → float tensor ``(3, S, S)`` with values in ``[0, 1]``.

No normalisation here: each backbone normalises its input the way its weights expect (see
:mod:`pygml.models`), so the same pipeline feeds every backbone.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

#: light jitter of the ``small`` augmentation (grey images of ~32 px): degrees, translate fraction, scale range
SMALL_ROTATION = 8.0
SMALL_TRANSLATE = 0.08
SMALL_SCALE = (0.9, 1.1)

ImageTransform = Callable[[Image.Image], torch.Tensor]


AUGMENTATIONS = ("small", "imagenet")
INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def _check(augmentation: str, image_size: int, resize_size: int, random_erasing: float,
           crop_scale: tuple[float, float], interpolation: str, erasing_scale: tuple[float, float],
           erasing_ratio: tuple[float, float], erasing_value: tuple[float, ...]) -> None:
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {random_erasing}")
    if augmentation == "imagenet" and resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be at least image_size ({image_size}): the test images "
                         "are resized, then centre-cropped to image_size")
    if len(crop_scale) != 2 or not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {tuple(crop_scale)}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if len(erasing_scale) != 2 or not 0.0 < erasing_scale[0] <= erasing_scale[1] < 1.0:
        raise ValueError(f"erasing_scale must be (low, high) with 0 < low <= high < 1, got {tuple(erasing_scale)}")
    if len(erasing_ratio) != 2 or not 0.0 < erasing_ratio[0] <= erasing_ratio[1]:
        raise ValueError(f"erasing_ratio must be (low, high) with 0 < low <= high, got {tuple(erasing_ratio)}")
    if len(erasing_value) not in (1, 3):
        raise ValueError(f"erasing_value must hold 1 value or 3 (one per channel), got {list(erasing_value)}")


class EnsureRGB:
    """PIL image → RGB PIL image (grey and palette images are expanded, RGB passes through)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_transforms(augmentation: str = "small", image_size: int = 32, *, resize_size: int = 256,
                     random_erasing: float = 0.0, crop_scale: tuple[float, float] = (0.08, 1.0),
                     interpolation: str = "bilinear", erasing_scale: tuple[float, float] = (0.02, 0.33),
                     erasing_ratio: tuple[float, float] = (0.3, 3.3),
                     erasing_value: Sequence[float] = (0.0,)) -> tuple[ImageTransform, ImageTransform]:
    """``(train_transform, test_transform)`` for ``augmentation``.

    ``small`` (grey glyphs, Fashion-MNIST, digits): train = resize to ``image_size``² + ``RandomAffine``
    (±8°, ±8 % shift, scale 0.9–1.1, black fill); test = resize to ``image_size``².

    ``imagenet`` (the papers' recipes, methods.md): train = ``RandomResizedCrop(image_size, scale=crop_scale)``
    + horizontal flip; test = ``Resize(resize_size)`` (shorter side) + ``CenterCrop(image_size)``; resizing
    with ``interpolation`` (``bilinear``, or ``bicubic`` as the BGFormer release).

    Both add ``RandomErasing(p=random_erasing, scale=erasing_scale, ratio=erasing_ratio, value=erasing_value)``
    at the end of the train pipeline when ``random_erasing > 0`` (torchvision's defaults; the Intra-Batch code
    erases areas 0.02–0.4 of aspect 0.3–1/0.3 with its normalised CIFAR mean, which on ``[0, 1]`` images is
    ``erasing_value = (0.5975, 0.5640, 0.5065)``).
    Output: ``float32`` tensor ``(3, image_size, image_size)`` in ``[0, 1]``. The geometric steps run on the
    PIL image (torchvision's classic transforms: on 32 px images about twice as fast as ``transforms.v2``).
    """
    _check(augmentation, image_size, resize_size, random_erasing, crop_scale, interpolation, erasing_scale,
           erasing_ratio, tuple(erasing_value))
    s = image_size
    mode = INTERPOLATIONS[interpolation]
    value = erasing_value[0] if len(erasing_value) == 1 else list(erasing_value)
    erase = ([T.RandomErasing(p=random_erasing, scale=tuple(erasing_scale), ratio=tuple(erasing_ratio), value=value)]
             if random_erasing > 0 else [])
    if augmentation == "small":
        train = [T.Resize((s, s), interpolation=mode),
                 T.RandomAffine(degrees=SMALL_ROTATION, translate=(SMALL_TRANSLATE, SMALL_TRANSLATE),
                                scale=SMALL_SCALE, fill=0)]
        test = [T.Resize((s, s), interpolation=mode)]
    else:
        train = [T.RandomResizedCrop(s, scale=tuple(crop_scale), interpolation=mode), T.RandomHorizontalFlip()]
        test = [T.Resize(resize_size, interpolation=mode), T.CenterCrop(s)]
    return (T.Compose([EnsureRGB(), *train, T.ToTensor(), *erase]),
            T.Compose([EnsureRGB(), *test, T.ToTensor()]))


__all__ = ["AUGMENTATIONS", "EnsureRGB", "INTERPOLATIONS", "build_transforms"]
