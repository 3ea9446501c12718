import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from pygml.data import ClassSubset, Digits, FashionMNIST, carve_validation
from pygml.data.small import FASHION_MNIST_ROOT, read_idx

FMNIST = Path(FASHION_MNIST_ROOT)
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="Debian package dataset-fashion-mnist is not installed")


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written by hand: 0, 0, type 0x08, ndim, big-endian uint32 dims, data."""
    return bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(a))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx_bytes(a)))
    assert np.array_equal(read_idx(tmp_path / "a.idx", 3, (2, 3, 4)), a)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz", 3), a)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-5], "truncated or corrupt"),
    (lambda raw: raw + b"\x00", "truncated or corrupt"),
    (lambda raw: b"\x00\x00\x0d" + raw[3:], "magic number"),
    (lambda raw: raw[:3] + b"\x02" + raw[4:], "dimensions"),
    (lambda raw: raw[:10], "truncated"),
])
def test_read_idx_rejects_damaged_files(tmp_path, damage, message):
    raw = _idx_bytes(np.ones((2, 3, 4), np.uint8))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(damage(raw))
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path, 3)
    assert str(path) in str(info.value)


def test_read_idx_checks_shape_and_gzip(tmp_path):
    raw = _idx_bytes(np.ones((2, 3, 4), np.uint8))
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\), expected \(2, 28, 28\)"):
        read_idx(path, 3, (2, 28, 28))
    path.write_bytes(gzip.compress(raw)[:-12])
    with pytest.raises(ValueError, match="cannot be decompressed") as info:
        read_idx(path, 3)
    assert str(path) in str(info.value)


def test_fashion_mnist_missing_files_name_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        FashionMNIST(tmp_path, "train")
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(info.value)


def test_fashion_mnist_truncated_file_is_a_clear_error(tmp_path):
    header = bytes([0, 0, 8, 3]) + struct.pack(">III", 10000, 28, 28)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(28 * 28 * 10)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(10000, np.uint8))))
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        FashionMNIST(tmp_path, "test")
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)


@needs_fmnist
def test_fashion_mnist_zero_shot_split():
    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    assert (len(train), len(test)) == (30000, 5000)
    assert np.bincount(train.labels).tolist() == [6000] * 5 and np.bincount(test.labels).tolist() == [1000] * 5
    assert train.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    assert test.class_names == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    # the first test image whose official label is >= 5, read independently of read_idx
    raw_images = gzip.decompress((FMNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    raw_labels = np.frombuffer(gzip.decompress((FMNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:], np.uint8)
    first = int(np.flatnonzero(raw_labels >= 5)[0])
    expected = np.frombuffer(raw_images[16 + 784 * first: 16 + 784 * (first + 1)], np.uint8).reshape(28, 28)
    image, label = test[0]
    assert label == raw_labels[first] - 5
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[..., 0], expected)


def test_digits_zero_shot_split():
    from sklearn.datasets import load_digits

    target = load_digits().target
    train, test = Digits("train"), Digits("test")
    assert len(train) == int((target < 5).sum()) and len(test) == int((target >= 5).sum())
    assert train.class_names == ["0", "1", "2", "3", "4"] and test.class_names == ["5", "6", "7", "8", "9"]
    assert np.bincount(test.labels).tolist() == [int((target == d).sum()) for d in range(5, 10)]
    assert train.images.dtype == np.uint8 and train.images.max() == 255 and train.images.shape[1:] == (8, 8)
    image, _ = train[0]
    assert image.size == (8, 8) and image.mode == "RGB"


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        Digits("train")


def test_carve_validation_holds_out_training_classes():
    train = Digits("train")
    rest, val = carve_validation(train, 0.4, seed=3, val_transform=str)
    again_rest, again_val = carve_validation(train, 0.4, seed=3)
    assert val.num_classes == 2 and rest.num_classes == 3
    assert set(val.class_names).isdisjoint(rest.class_names)
    assert sorted(val.class_names + rest.class_names) == train.class_names
    assert val.class_names == again_val.class_names and np.array_equal(rest.labels, again_rest.labels)
    assert len(val) + len(rest) == len(train)
    for subset in (rest, val):
        assert set(np.unique(subset.labels)) == set(range(subset.num_classes))
        for i in (0, len(subset) - 1):
            original = int(subset.indices[i])
            assert subset.class_names[subset.labels[i]] == train.class_names[train.labels[original]]
            assert np.array_equal(np.asarray(subset.load_image(i)), np.asarray(train.load_image(original)))
    assert isinstance(val[0][0], str), "the validation subset uses its own transform"
    assert val.split == "val" and rest.split == "train"
    others = {tuple(carve_validation(train, 0.4, seed=s)[1].class_names) for s in range(10)}
    assert len(others) > 1, "the seed chooses the held-out classes"


@pytest.mark.parametrize("fraction, match", [
    (0.0, r"fraction must be in \(0, 1\)"), (1.0, r"fraction must be in \(0, 1\)"),
    (-0.1, r"fraction must be in \(0, 1\)"),
    (0.9, "a validation fraction of 0.9 of 5 training classes leaves 1 for training"),
])
def test_carve_validation_bad_fraction(fraction, match):
    with pytest.raises(ValueError, match=match):
        carve_validation(Digits("train"), fraction)


def test_class_subset_rejects_bad_classes():
    train = Digits("train")
    with pytest.raises(ValueError, match="not labels"):
        ClassSubset(train, [0, 7], "train")
    with pytest.raises(ValueError, match="distinct"):
        ClassSubset(train, [1, 1], "train")
