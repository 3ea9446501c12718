import numpy as np
import pytest
import torch
from PIL import Image

from pygml.config import DataConfig
from pygml.data.transforms import build_transforms


def _grey(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))


def _check(x, size):
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, size, size)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_small_test_transform_is_the_image_in_unit_range():
    image = _grey(32)
    _, test = build_transforms(DataConfig(augmentation="small", image_size=32))
    x = test(image)
    _check(x, 32)
    expected = torch.from_numpy(np.array(image)).float() / 255
    for c in range(3):
        assert torch.allclose(x[c], expected), "grey input -> three equal channels, no normalisation"


@pytest.mark.parametrize("source, size", [(8, 32), (28, 28), (32, 32), (40, 24)])
def test_small_shapes(source, size):
    train, test = build_transforms(DataConfig(augmentation="small", image_size=size))
    for image in (_grey(source), _grey(source).convert("RGB")):
        _check(train(image), size)
        _check(test(image), size)


def test_small_train_augments_and_is_reproducible_under_a_seed():
    image = Image.new("L", (32, 32))
    image.paste(255, (8, 8, 20, 24))
    train, test = build_transforms(DataConfig(augmentation="small", image_size=32))
    torch.manual_seed(0)
    a = [train(image) for _ in range(5)]
    torch.manual_seed(0)
    b = [train(image) for _ in range(5)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert any(not torch.equal(u, test(image)) for u in a), "the train transform jitters"
    assert torch.equal(test(image), test(image))
    # light jitter: the ink mass stays roughly where it was
    for u in a:
        assert abs(u[0].sum() - test(image)[0].sum()) < 0.35 * test(image)[0].sum()


def test_imagenet_shapes_and_centre_crop():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    train, test = build_transforms(DataConfig(augmentation="imagenet", image_size=64, resize_size=72))
    _check(train(image), 64)
    _check(test(image), 64)
    assert torch.equal(test(image), test(image))
    # the test transform: shorter side to 72 (200x300 -> 72x108), then the central 64x64
    resized = np.asarray(image.resize((108, 72), Image.BILINEAR), dtype=np.float32) / 255
    top, left = (72 - 64) // 2, (108 - 64) // 2
    centre = torch.from_numpy(resized[top:top + 64, left:left + 64]).permute(2, 0, 1)
    assert (test(image) - centre).abs().mean() < 0.02


def test_random_erasing():
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    cfg = DataConfig(augmentation="imagenet", image_size=32, resize_size=32, random_erasing=1.0)
    train, test = build_transforms(cfg)
    torch.manual_seed(0)
    erased = [train(white) for _ in range(4)]
    assert all((x == 0).any() for x in erased), "p=1 erases a patch in every image"
    assert (test(white) == 1).all(), "never at test time"
    plain, _ = build_transforms(DataConfig(augmentation="imagenet", image_size=32, resize_size=32))
    assert (plain(white) == 1).all()


@pytest.mark.parametrize("overrides, key", [
    ({"augmentation": "autoaugment"}, "data.augmentation"),
    ({"image_size": 0}, "data.image_size"),
    ({"random_erasing": 1.5}, "data.random_erasing"),
    ({"augmentation": "imagenet", "image_size": 227, "resize_size": 200}, "data.resize_size"),
])
def test_bad_values(overrides, key):
    with pytest.raises(ValueError, match=key):
        build_transforms(DataConfig(**overrides))
