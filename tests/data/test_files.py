"""The user's own images: folder_splits and csv_splits on small trees and manifests drawn in the test."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from pygml.data import CorruptImageError, build_transforms, csv_splits, folder_splits, list_image_tree
from tests.image_trees import CORRUPT, SINGLETON, make_manifest, make_tree, write_class


def test_one_tree_is_split_by_class_deterministically(tmp_path, caplog):
    root = make_tree(tmp_path / "photos", classes=8, corrupt=False)
    with caplog.at_level(logging.INFO, logger="pygml"), pytest.warns(UserWarning, match=f"'{SINGLETON}'"):
        splits = folder_splits(root, test_fraction=0.25, seed=3)
    assert f"image folder {root}: train 30 images / 6 classes, test 10 images / 2 classes" in caplog.text
    assert not set(splits.train.class_names) & set(splits.query.class_names)
    assert SINGLETON not in splits.train.class_names + splits.query.class_names
    assert splits.gallery is None and splits.query.split == "test"
    assert splits.train.class_names == sorted(splits.train.class_names, key=lambda c: int(c[1:]))
    assert set(np.unique(splits.train.labels)) == set(range(6))
    with pytest.warns(UserWarning):
        again = folder_splits(root, test_fraction=0.25, seed=3)
        others = {tuple(folder_splits(root, test_fraction=0.25, seed=s).query.class_names) for s in range(6)}
    assert again.query.class_names == splits.query.class_names and again.train.paths == splits.train.paths
    assert len(others) > 1, "the seed chooses the test classes"


def test_images_of_every_format_and_size_load_through_the_transforms(tmp_path):
    root = make_tree(tmp_path / "photos", corrupt=False, singleton=False)
    train_tf, test_tf = build_transforms("small", 16)
    splits = folder_splits(root, train_tf, test_tf)
    assert {p.rsplit(".", 1)[1] for p in splits.train.paths + splits.query.paths} == {"png", "jpg", "webp"}
    image, label = splits.query[0]
    assert image.shape == (3, 16, 16) and 0 <= float(image.min()) <= float(image.max()) <= 1
    assert label == splits.query.labels[0]
    sizes = {splits.train.load_image(i).size for i in range(len(splits.train))}
    assert len(sizes) > 2


def test_a_corrupt_image_is_an_error_naming_it_or_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path / "photos", splits={"train": range(3), "test": range(3, 6)}, singleton=False)
    splits = folder_splits(root)
    index = next(i for i, p in enumerate(splits.train.paths) if p.endswith(CORRUPT))
    with pytest.raises(CorruptImageError, match=f"cannot read image .*{CORRUPT}.*data.skip_corrupt=true"):
        splits.train[index]
    with pytest.warns(UserWarning, match=f"train: skipped 1 of 16 images that are missing or corrupt .*{CORRUPT}"):
        skipped = folder_splits(root, skip_corrupt=True, progress=False)
    assert [p.endswith(CORRUPT) for p in skipped.train.skipped] == [True]
    assert len(skipped.train) == 15 and not any(p.endswith(CORRUPT) for p in skipped.train.paths)


def test_given_splits_and_a_class_in_both(tmp_path):
    root = make_tree(tmp_path / "photos", splits={"train": range(3), "test": range(3, 6)}, corrupt=False)
    with pytest.warns(UserWarning, match=f"train: dropped 1 images of 1 classes with a single image .*'{SINGLETON}'"):
        splits = folder_splits(root)
    assert splits.train.class_names == ["c0", "c1", "c2"] and splits.query.class_names == ["c3", "c4", "c5"]
    write_class(root / "test" / "c1", 1, 2, offset=50)
    with pytest.raises(ValueError, match="1 classes are both in train and in the test images \\('c1'\\)"):
        folder_splits(root)


def test_query_and_gallery_share_labels_and_unanswerable_queries_are_dropped(tmp_path):
    root = make_tree(tmp_path / "shop", splits={"train": range(3), "query": range(3, 6), "gallery": range(3, 7)},
                     corrupt=False, singleton=False)
    write_class(root / "query" / "c9", 9, 2)
    with pytest.warns(UserWarning, match="query: dropped 2 images of 1 classes that have no gallery image .*'c9'"):
        splits = folder_splits(root)
    assert splits.query.class_names == splits.gallery.class_names == ["c3", "c4", "c5", "c6"]
    q = splits.query
    assert [q.class_names[y] for y in q.labels] == [p.split("/")[-2] for p in q.paths]


@pytest.mark.parametrize("layout, match", [
    ({"train": range(3)}, r"found the splits \['train'\]; expected train with test"),
    ({"train": range(2), "query": range(2, 4)}, r"expected train with test, or train with query and gallery"),
    ({"train": range(2), "test": range(2, 4), "gallery": range(2, 4)}, "found the splits"),
])
def test_incomplete_layouts_are_errors(tmp_path, layout, match):
    root = make_tree(tmp_path / "photos", splits=layout, corrupt=False, singleton=False)
    with pytest.raises(ValueError, match=match):
        folder_splits(root)


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path / 'nowhere'} does not exist"):
        folder_splits(tmp_path / "nowhere")
    (tmp_path / "empty" / "c0").mkdir(parents=True)
    (tmp_path / "empty" / "c0" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no images found under"):
        list_image_tree(tmp_path / "empty")
    root = make_tree(tmp_path / "loose", corrupt=False, singleton=False)
    write_class(root, 3, 1)
    with pytest.raises(ValueError, match="1 images lie directly in .*outside any class folder"):
        folder_splits(root)
    with pytest.raises(ValueError, match="a test fraction of 0.9 of 6 classes in image folder"):
        folder_splits(make_tree(tmp_path / "few", corrupt=False, singleton=False), test_fraction=0.9)


@pytest.mark.parametrize("name", ["manifest.csv", "manifest.parquet"])
def test_manifest_without_split_column(tmp_path, name):
    manifest = make_manifest(tmp_path, name)
    with pytest.warns(UserWarning) as record:
        splits = csv_splits(manifest, skip_corrupt=True, progress=False, seed=1)
    messages = " ".join(str(w.message) for w in record)
    assert "skipped 1 of 32 images" in messages and "with a single image" in messages and "('99')" in messages
    assert len(splits.train) + len(splits.query) == 30
    assert all(p.startswith(str(tmp_path / "images")) for p in splits.train.paths)
    assert splits.train.name == "csv"


def test_manifest_with_split_column_and_its_errors(tmp_path):
    manifest = make_manifest(tmp_path, split=True, corrupt=False, singleton=False)
    splits = csv_splits(manifest)
    assert splits.train.class_names == ["0", "1", "2"] and splits.query.class_names == ["3", "4", "5"]
    frame = pd.read_csv(manifest)

    def write(df, name="bad.csv"):
        df.to_csv(tmp_path / name, index=False)
        return tmp_path / name

    with pytest.raises(ValueError, match=r"has no column 'label'; its columns are \['path', 'split'\]"):
        csv_splits(write(frame.drop(columns="label")))
    moved = frame.copy()
    moved.loc[4, "path"] = "../elsewhere/x.png"
    with pytest.raises(FileNotFoundError, match=f"1 listed images do not exist, e.g. {tmp_path.parent}/elsewhere/x.png "
                                                f"\\({tmp_path}/bad.csv line 6\\)"):
        csv_splits(write(moved))
    with pytest.warns(UserWarning, match="skipped 1 of 15 images"):
        assert len(csv_splits(write(moved), skip_corrupt=True, progress=False).train) == 14
    leaked = frame.copy()
    leaked.loc[0, "split"] = "test"
    leaked.loc[1, "split"] = "test"
    with pytest.raises(ValueError, match=r"classes are both in train and in the test images \('0'\)"):
        csv_splits(write(leaked))
    typo = frame.copy()
    typo.loc[2, "split"] = "tset"
    with pytest.raises(ValueError, match="bad.csv line 4: split 'tset'; expected one of train, test, query, gallery"):
        csv_splits(write(typo))
    blank = frame.copy().astype(str)
    blank.loc[3, "label"] = ""
    with pytest.raises(ValueError, match="bad.csv line 5: empty label"):
        csv_splits(write(blank))
    with pytest.raises(FileNotFoundError, match="manifest .*missing.csv not found"):
        csv_splits(tmp_path / "missing.csv")
    (tmp_path / "binary.csv").write_bytes(b"\x00\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="binary.csv"):
        csv_splits(tmp_path / "binary.csv")
