"""Image transforms: PIL image → float tensor ``(3, S, S)`` with values in ``[0, 1]``.

No normalisation here: each backbone normalises its input the way its weights expect (see
:mod:`pygml.models`), so the same pipeline feeds every backbone.
"""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from pygml.config import DataConfig

#: light jitter of the ``small`` augmentation (grey images of ~32 px): degrees, translate fraction, scale range
SMALL_ROTATION = 8.0
SMALL_TRANSLATE = 0.08
SMALL_SCALE = (0.9, 1.1)

ImageTransform = Callable[[Image.Image], torch.Tensor]


def _check(cfg: DataConfig) -> None:
    if cfg.augmentation not in ("small", "imagenet"):
        raise ValueError(f"data.augmentation must be 'small' or 'imagenet', got {cfg.augmentation!r}")
    if cfg.image_size < 1:
        raise ValueError(f"data.image_size must be a positive number of pixels, got {cfg.image_size}")
    if not 0.0 <= cfg.random_erasing <= 1.0:
        raise ValueError(f"data.random_erasing is a probability in [0, 1], got {cfg.random_erasing}")
    if cfg.augmentation == "imagenet" and cfg.resize_size < cfg.image_size:
        raise ValueError(f"data.resize_size ({cfg.resize_size}) must be at least data.image_size "
                         f"({cfg.image_size}): the test images are resized, then centre-cropped to image_size")


class EnsureRGB:
    """PIL image → RGB PIL image (grey and palette images are expanded, RGB passes through)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_transforms(cfg: DataConfig) -> tuple[ImageTransform, ImageTransform]:
    """``(train_transform, test_transform)`` for ``cfg.augmentation``.

    ``small`` (grey glyphs, Fashion-MNIST, digits): train = resize to ``image_size``² + ``RandomAffine``
    (±8°, ±8 % shift, scale 0.9–1.1, black fill); test = resize to ``image_size``².

    ``imagenet`` (the Intra-Batch recipe, methods.md): train = ``RandomResizedCrop(image_size)`` +
    horizontal flip; test = ``Resize(resize_size)`` (shorter side) + ``CenterCrop(image_size)``.

    Both add ``RandomErasing(p=random_erasing)`` at the end of the train pipeline when ``random_erasing > 0``.
    Output: ``float32`` tensor ``(3, image_size, image_size)`` in ``[0, 1]``. The geometric steps run on the
    PIL image (torchvision's classic transforms: on 32 px images about twice as fast as ``transforms.v2``).
    """
    _check(cfg)
    s = cfg.image_size
    erase = [T.RandomErasing(p=cfg.random_erasing)] if cfg.random_erasing > 0 else []
    if cfg.augmentation == "small":
        train = [T.Resize((s, s)), T.RandomAffine(degrees=SMALL_ROTATION, translate=(SMALL_TRANSLATE, SMALL_TRANSLATE),
                                                  scale=SMALL_SCALE, fill=0)]
        test = [T.Resize((s, s))]
    else:
        train = [T.RandomResizedCrop(s), T.RandomHorizontalFlip()]
        test = [T.Resize(cfg.resize_size), T.CenterCrop(s)]
    return (T.Compose([EnsureRGB(), *train, T.ToTensor(), *erase]),
            T.Compose([EnsureRGB(), *test, T.ToTensor()]))
