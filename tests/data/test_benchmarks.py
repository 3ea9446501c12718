"""The benchmark loaders on tiny fake trees in the official layouts, written by each test."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pygml.data.base import DatasetSplits
from pygml.data.benchmarks import (
    CUB200,
    Cars196,
    CorruptImageError,
    InShop,
    StanfordOnlineProducts,
    benchmark_splits,
    read_cars_annotations,
    write_cars_text_list,
)

scipy_io = pytest.importorskip("scipy.io")


def _color(key: int) -> tuple[int, int, int]:
    return ((37 * key) % 256, (91 * key) % 256, (17 * key + 80) % 256)


def _jpeg(path: Path, key: int) -> None:
    """An 8×6 JPEG filled with a colour that encodes ``key``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), _color(key)).save(path, format="JPEG", quality=95)


def _assert_colour(image: Image.Image, key: int) -> None:
    assert image.mode == "RGB" and image.size == (8, 6)
    np.testing.assert_allclose(np.asarray(image).reshape(-1, 3).mean(0), _color(key), atol=4)


def make_cub(root: Path, classes=(1, 2, 100, 101, 150, 200), per_class=2) -> Path:
    """``root/CUB_200_2011`` with ``per_class`` images of each class; the colour encodes the class."""
    base = root / "CUB_200_2011"
    images, labels, image_id = [], [], 0
    for c in classes:
        for j in range(per_class):
            image_id += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            _jpeg(base / "images" / rel, c)
            images.append(f"{image_id} {rel}\n")
            labels.append(f"{image_id} {c}\n")
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    return base


def make_cars(root: Path, classes=(1, 98, 99, 196, 5), write_mat=True) -> list[tuple[str, int]]:
    """``root/cars_annos.mat`` with the real file's structure (1×N struct array ``annotations``, 1×196 cell
    array ``class_names``) and ``root/car_ims``; one image per entry of ``classes``."""
    root.mkdir(parents=True, exist_ok=True)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.empty((1, len(classes)), dtype=[(f, "O") for f in fields])
    entries = []
    for i, c in enumerate(classes):
        rel = f"car_ims/{i + 1:06d}.jpg"
        _jpeg(root / rel, c)
        ann[0, i] = (np.array([rel]), np.array([[1]], np.uint8), np.array([[2]], np.uint8),
                     np.array([[7]], np.uint8), np.array([[5]], np.uint8), np.array([[c]], np.uint8),
                     np.array([[i % 2]], np.uint8))
        entries.append((rel, c))
    names = np.empty((1, 196), dtype="O")
    for c in range(196):
        names[0, c] = np.array([f"Car model {c + 1}"])
    if write_mat:
        scipy_io.savemat(root / "cars_annos.mat", {"annotations": ann, "class_names": names})
    return entries


def make_sop(root: Path) -> Path:
    base = root / "Stanford_Online_Products"
    splits = {"train": [(1, 1, "bicycle"), (1, 1, "bicycle"), (7, 2, "chair"), (3, 1, "bicycle")],
              "test": [(12, 3, "sofa"), (12, 3, "sofa"), (10, 2, "chair")]}
    image_id = 0
    for split, rows in splits.items():
        lines = ["image_id class_id super_class_id path\n"]
        for class_id, super_id, folder in rows:
            image_id += 1
            rel = f"{folder}_final/{class_id}_{image_id}.JPG"
            _jpeg(base / rel, class_id)
            lines.append(f"{image_id} {class_id} {super_id} {rel}\n")
        (base / f"Ebay_{split}.txt").write_text("".join(lines))
    return base


INSHOP_ROWS = [
    ("id_00000001", "train"), ("id_00000001", "train"), ("id_00000004", "train"),
    ("id_00000009", "query"), ("id_00000002", "query"), ("id_00000009", "query"),
    ("id_00000002", "gallery"), ("id_00000009", "gallery"), ("id_00000007", "gallery"),
]


def make_inshop(root: Path, where: str = "list_eval_partition.txt") -> None:
    lines = [f"{len(INSHOP_ROWS)}\n", "image_name item_id evaluation_status\n"]
    for i, (item, status) in enumerate(INSHOP_ROWS):
        rel = f"img/WOMEN/Dresses/{item}/{i:02d}_1_front.jpg"
        _jpeg(root / rel, int(item[3:]))
        lines.append(f"{rel}    {item}   {status}\n")
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).write_text("".join(lines))


def test_cub_splits_labels_and_images(tmp_path):
    make_cub(tmp_path)
    train = CUB200(tmp_path, "train", check_counts=False)
    test = CUB200(tmp_path / "CUB_200_2011", "test", check_counts=False)
    assert len(train) == 6 and len(test) == 6
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(test.labels, [0, 0, 1, 1, 2, 2])
    assert train.class_names == ["001.Bird_1", "002.Bird_2", "100.Bird_100"]
    assert test.class_names == ["101.Bird_101", "150.Bird_150", "200.Bird_200"]
    assert train.num_classes == 3 and train.name == "cub" and test.split == "test"
    for ds, classes in ((train, (1, 2, 100)), (test, (101, 150, 200))):
        for i in range(len(ds)):
            image, label = ds[i]
            assert label == ds.labels[i]
            _assert_colour(image, classes[label])


def test_transform_is_applied(tmp_path):
    make_cub(tmp_path)
    ds = CUB200(tmp_path, "train", lambda im: np.asarray(im).shape, check_counts=False)
    assert ds[0] == ((6, 8, 3), 0)


def test_cars_from_mat_file(tmp_path):
    entries = make_cars(tmp_path)
    train = Cars196(tmp_path, "train", check_counts=False)
    test = Cars196(tmp_path, "test", check_counts=False)
    # classes 1, 98, 5 train -> sorted 1, 5, 98; 99, 196 test; the 'test' flag of the .mat is ignored
    np.testing.assert_array_equal(train.labels, [0, 2, 1])
    np.testing.assert_array_equal(test.labels, [0, 1])
    assert train.class_names == ["Car model 1", "Car model 5", "Car model 98"]
    assert test.class_names == ["Car model 99", "Car model 196"]
    assert [Path(p).name for p in train.paths] == ["000001.jpg", "000002.jpg", "000005.jpg"]
    _assert_colour(test[1][0], 196)
    rel, cls, _, source = read_cars_annotations(tmp_path)
    assert list(zip(rel, cls)) == entries and source.name == "cars_annos.mat"


def test_cars_text_list_when_scipy_is_missing(tmp_path, monkeypatch):
    make_cars(tmp_path)
    with_mat = Cars196(tmp_path, "test", check_counts=False)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        Cars196(tmp_path, "test", check_counts=False)
    monkeypatch.undo()
    out = write_cars_text_list(tmp_path)
    assert out.read_text().splitlines()[0] == "car_ims/000001.jpg 1"
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    from_txt = Cars196(tmp_path, "test", check_counts=False)
    assert from_txt.paths == with_mat.paths
    np.testing.assert_array_equal(from_txt.labels, with_mat.labels)
    assert from_txt.class_names == ["class_99", "class_196"]
    assert from_txt.list_file == out


def test_sop_splits(tmp_path):
    make_sop(tmp_path)
    train = StanfordOnlineProducts(tmp_path, "train", check_counts=False)
    test = StanfordOnlineProducts(tmp_path / "Stanford_Online_Products", "test", check_counts=False)
    np.testing.assert_array_equal(train.labels, [0, 0, 2, 1])
    assert train.class_names == ["bicycle_final/1", "bicycle_final/3", "chair_final/7"]
    np.testing.assert_array_equal(test.labels, [1, 1, 0])
    assert test.class_names == ["chair_final/10", "sofa_final/12"]
    _assert_colour(train[2][0], 7)


@pytest.mark.parametrize("where", ["list_eval_partition.txt", "Eval/list_eval_partition.txt",
                                   "Anno/list_eval_partition.txt"])
def test_inshop_query_and_gallery_share_labels(tmp_path, where):
    make_inshop(tmp_path, where)
    train = InShop(tmp_path, "train", check_counts=False)
    query = InShop(tmp_path, "query", check_counts=False)
    gallery = InShop(tmp_path, "gallery", check_counts=False)
    np.testing.assert_array_equal(train.labels, [0, 0, 1])
    assert train.class_names == ["id_00000001", "id_00000004"]
    assert query.class_names == gallery.class_names == ["id_00000002", "id_00000007", "id_00000009"]
    np.testing.assert_array_equal(query.labels, [2, 0, 2])
    np.testing.assert_array_equal(gallery.labels, [0, 2, 1])
    for ds in (query, gallery):
        for i in range(len(ds)):
            image, label = ds[i]
            _assert_colour(image, int(ds.class_names[label][3:]))


def test_benchmark_splits(tmp_path):
    make_cub(tmp_path / "somewhere")
    splits = benchmark_splits("cub", tmp_path / "somewhere", None, str, check_counts=False)
    assert isinstance(splits, DatasetSplits) and splits.gallery is None and splits.val is None
    assert len(splits.train) == len(splits.query) == 6
    assert splits.train.transform is None and splits.query.transform is str
    assert splits.train.split == "train" and splits.query.split == "test"

    make_inshop(tmp_path / "data" / "inshop")
    splits = benchmark_splits("inshop", str(tmp_path / "data" / "inshop"), None, None, check_counts=False)
    assert (len(splits.train), len(splits.query), len(splits.gallery)) == (3, 3, 3)
    assert (splits.query.split, splits.gallery.split) == ("query", "gallery")
    with pytest.raises(ValueError, match="'glyphs' is not a benchmark; expected one of cub, cars, sop, inshop"):
        benchmark_splits("glyphs", tmp_path, None, None)


def test_benchmark_splits_passes_skip_corrupt_to_every_split(tmp_path):
    make_cub(tmp_path)
    Path(CUB200(tmp_path, "test", check_counts=False).paths[0]).write_bytes(b"broken")
    with pytest.warns(UserWarning, match="skipped 1 of 6 images"):
        splits = benchmark_splits("cub", tmp_path, None, None, check_counts=False, skip_corrupt=True)
    assert (len(splits.train), len(splits.query)) == (6, 5)


def test_benchmark_splits_checks_counts_by_default(tmp_path):
    make_sop(tmp_path)
    with pytest.raises(ValueError, match=r"expected 59,551 images of 11,318 classes, found 4 images of 3 classes"):
        benchmark_splits("sop", tmp_path, None, None)


@pytest.mark.parametrize("cls, make, expect", [
    (CUB200, make_cub, "expected 5,864 images of 100 classes, found 6 images of 3 classes"),
    (Cars196, make_cars, "expected 8,054 images of 98 classes, found 3 images of 3 classes"),
    (InShop, make_inshop, "expected 25,882 images of 3,997 classes, found 3 images of 2 classes"),
])
def test_wrong_count_names_expected_found_and_list_file(tmp_path, cls, make, expect):
    make(tmp_path)
    with pytest.raises(ValueError, match=expect) as info:
        cls(tmp_path, "train")
    assert "check_counts=False" in str(info.value)
    list_file = cls(tmp_path, "train", check_counts=False).list_file
    assert str(list_file) in str(info.value)


@pytest.mark.parametrize("cls", [CUB200, Cars196, StanfordOnlineProducts, InShop])
def test_missing_root(tmp_path, cls):
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        cls(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in str(info.value) and "datasets/README.md" in str(info.value)


@pytest.mark.parametrize("cls, name", [
    (CUB200, "CUB_200_2011/images.txt"), (Cars196, "cars_annos.mat"),
    (StanfordOnlineProducts, "Stanford_Online_Products/Ebay_train.txt"),
    (InShop, "Eval/list_eval_partition.txt"),
])
def test_missing_list_file(tmp_path, cls, name):
    with pytest.raises(FileNotFoundError, match="list file not found") as info:
        cls(tmp_path, "train")
    assert str(tmp_path / name) in str(info.value)


def test_cub_missing_labels_file_and_bad_split(tmp_path):
    base = make_cub(tmp_path)
    (base / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="image_class_labels.txt"):
        CUB200(tmp_path, "train", check_counts=False)
    with pytest.raises(ValueError, match="split must be one of train, test"):
        CUB200(tmp_path, "query")


def test_malformed_list_line_names_file_and_line(tmp_path):
    base = make_sop(tmp_path)
    with open(base / "Ebay_test.txt", "a") as f:
        f.write("99 12 3\n")
    with pytest.raises(ValueError, match=r"Ebay_test.txt, line 5: expected 4 fields, got 3"):
        StanfordOnlineProducts(tmp_path, "test", check_counts=False)


def _break_images(tmp_path):
    """CUB train split with image 1 replaced by garbage and image 3 truncated; returns their paths."""
    make_cub(tmp_path)
    ds = CUB200(tmp_path, "train", check_counts=False)
    Path(ds.paths[1]).write_bytes(b"this is not a jpeg")
    data = Path(ds.paths[3]).read_bytes()
    Path(ds.paths[3]).write_bytes(data[: len(data) // 2])
    return ds.paths[1], ds.paths[3]


def test_corrupt_images_raise_with_their_path(tmp_path):
    garbage, truncated = _break_images(tmp_path)
    ds = CUB200(tmp_path, "train", check_counts=False)
    _assert_colour(ds[0][0], 1)
    with pytest.raises(CorruptImageError, match="cannot read image") as info:
        ds[1]
    assert info.value.path == garbage and garbage in str(info.value) and "skip_corrupt" in str(info.value)
    with pytest.raises(CorruptImageError, match="(?i)truncated") as info:
        ds[3]
    assert truncated in str(info.value)
    Path(ds.paths[4]).unlink()
    with pytest.raises(FileNotFoundError, match="is listed but missing") as info:
        ds[4]
    assert ds.paths[4] in str(info.value)


def test_skip_corrupt_drops_counts_and_keeps_labels(tmp_path):
    garbage, truncated = _break_images(tmp_path)
    full = CUB200(tmp_path, "train", check_counts=False)
    Path(full.paths[5]).unlink()
    with pytest.warns(UserWarning, match="skipped 3 of 6 images") as record:
        ds = CUB200(tmp_path, "train", check_counts=False, skip_corrupt=True, progress=False)
    assert garbage in str(record[0].message)
    assert ds.skipped == [garbage, full.paths[3], full.paths[5]]
    assert ds.paths == [full.paths[0], full.paths[2], full.paths[4]]
    np.testing.assert_array_equal(ds.labels, [0, 1, 2])
    assert ds.class_names == full.class_names
    for i in range(len(ds)):
        image, label = ds[i]
        _assert_colour(image, (1, 2, 100)[label])


def test_skip_corrupt_reports_a_class_left_empty(tmp_path):
    make_cub(tmp_path)
    full = CUB200(tmp_path, "train", check_counts=False)
    for i in (2, 3):
        Path(full.paths[i]).write_bytes(b"")
    with pytest.warns(UserWarning, match=r"classes left without images: \['002.Bird_2'\]"):
        ds = CUB200(tmp_path, "train", check_counts=False, skip_corrupt=True, progress=False)
    np.testing.assert_array_equal(ds.labels, [0, 0, 2, 2])
    assert ds.num_classes == 3
