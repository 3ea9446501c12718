import numpy as np
import pytest
import torch
from PIL import Image

from pygml.data import build_transforms


def _grey(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))


def _check(x, size):
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, size, size)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_small_test_transform_is_the_image_in_unit_range():
    image = _grey(32)
    _, test = build_transforms("small", 32)
    x = test(image)
    _check(x, 32)
    expected = torch.from_numpy(np.array(image)).float() / 255
    for c in range(3):
        assert torch.allclose(x[c], expected), "grey input -> three equal channels, no normalisation"


@pytest.mark.parametrize("source, size", [(8, 32), (28, 28), (32, 32), (40, 24)])
def test_small_shapes(source, size):
    train, test = build_transforms("small", size)
    for image in (_grey(source), _grey(source).convert("RGB")):
        _check(train(image), size)
        _check(test(image), size)


def test_small_train_augments_and_is_reproducible_under_a_seed():
    image = Image.new("L", (32, 32))
    image.paste(255, (8, 8, 20, 24))
    train, test = build_transforms("small", 32)
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
    train, test = build_transforms("imagenet", 64, resize_size=72)
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
    train, test = build_transforms("imagenet", 32, resize_size=32, random_erasing=1.0)
    torch.manual_seed(0)
    erased = [train(white) for _ in range(4)]
    assert all((x == 0).any() for x in erased), "p=1 erases a patch in every image"
    assert (test(white) == 1).all(), "never at test time"
    plain, _ = build_transforms("imagenet", 32, resize_size=32)
    assert (plain(white) == 1).all()


def test_crop_scale_bounds_the_area_of_the_train_crop():
    """RandomResizedCrop(scale=(1, 1)) takes the whole image (aspect ratio 1 on a square): only the flip is left."""
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    train, test = build_transforms("imagenet", 48, resize_size=48, crop_scale=(1.0, 1.0))
    torch.manual_seed(0)
    whole = test(image)
    for _ in range(6):
        x = train(image)
        assert torch.equal(x, whole) or torch.equal(x, whole.flip(-1))
    small, _ = build_transforms("imagenet", 48, resize_size=48, crop_scale=(0.05, 0.05))
    assert not any(torch.equal(small(image), whole) for _ in range(3))


def test_interpolation_filter():
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8))
    _, bilinear = build_transforms("small", 24)
    _, bicubic = build_transforms("small", 24, interpolation="bicubic")
    expected = np.asarray(image.convert("RGB").resize((24, 24), Image.BICUBIC), dtype=np.float32) / 255
    assert (bicubic(image) - torch.from_numpy(expected).permute(2, 0, 1)).abs().max() < 0.01
    assert not torch.allclose(bicubic(image), bilinear(image))


@pytest.mark.parametrize("args, kwargs, match", [
    (("autoaugment", 32), {}, "augmentation must be one of small, imagenet"),
    (("small", 0), {}, "image_size must be a positive number of pixels"),
    (("small", 32), {"random_erasing": 1.5}, r"random_erasing is a probability in \[0, 1\]"),
    (("imagenet", 227), {"resize_size": 200}, r"resize_size \(200\) must be at least image_size \(227\)"),
    (("imagenet", 32), {"crop_scale": (0.5, 0.2)}, "crop_scale must be"),
    (("imagenet", 32), {"crop_scale": (0.0, 1.0)}, "crop_scale must be"),
    (("small", 32), {"interpolation": "lanczos"}, "interpolation must be one of bilinear, bicubic"),
])
def test_bad_values_name_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_transforms(*args, **kwargs)
