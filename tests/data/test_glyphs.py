import math
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

import pygml.data.glyphs as glyphs
from pygml.data.glyphs import (GlyphFontsError, Glyphs, load_manifest, locate_fonts, matplotlib_font_dir,
                               parse_code_point, render_glyphs, sha256_file, variant_manifest)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("glyphs")
    return Glyphs(root, "train", progress=False), Glyphs(root, "test", progress=False)


def _ink_rows(img):
    rows = np.flatnonzero(img.max(axis=1) > 127)
    return rows.min(), rows.max()


def test_manifest_fonts_are_the_installed_files():
    for variant in ("full", "matplotlib"):
        vm = variant_manifest(variant)
        located = locate_fonts(variant)
        assert [e["file"] for e, _ in located] == [e["file"] for e in vm["fonts"]]
        for entry, path in located:
            assert path.name == entry["file"]
            assert sha256_file(path) == entry["sha256"]
    assert all(p.parent == matplotlib_font_dir() for _, p in locate_fonts("matplotlib"))


def test_manifest_is_self_consistent():
    for variant in ("full", "matplotlib"):
        vm = variant_manifest(variant)
        chars = [c["char"] for c in vm["classes"]]
        assert len(set(chars)) == len(chars) == vm["num_classes"]
        for c in vm["classes"]:
            assert chr(parse_code_point(c["code_point"])) == c["char"]
            assert c["fonts"] == sum(c["char"] in f["chars"] for f in vm["fonts"]) >= vm["min_fonts"]
        assert vm["num_images"] == sum(len(f["chars"]) for f in vm["fonts"])
        assert set("".join(f["chars"] for f in vm["fonts"])) == set(chars)
        train = {c["char"] for c in vm["classes"] if c["split"] == "train"}
        test = {c["char"] for c in vm["classes"] if c["split"] == "test"}
        assert not train & test and len(train) + len(test) == len(chars)
        assert len(train) == math.ceil(len(chars) / 2)
        for sp, group in (("train", train), ("test", test)):
            assert vm["split_images"][sp] == sum(c["fonts"] for c in vm["classes"] if c["char"] in group)
        # the look-alikes named in the issue are gone, the Latin originals stay
        for gone in "ΑΒΕΟАВЕОаеосрху":
            assert gone not in chars
        for kept in "ABEOaeocpxyo0":
            assert kept in chars


def test_split_follows_the_documented_rule():
    vm = variant_manifest("full")
    cps = sorted(parse_code_point(c["code_point"]) for c in vm["classes"])
    perm = np.random.default_rng(load_manifest()["rules"]["split_seed"]).permutation(len(cps))
    n_train = math.ceil(len(cps) / 2)
    expected_train = {cps[i] for i in perm[:n_train]}
    got_train = {parse_code_point(c["code_point"]) for c in vm["classes"] if c["split"] == "train"}
    assert got_train == expected_train


def test_rendered_dataset_has_the_advertised_counts(full):
    vm = variant_manifest("full")
    for ds in full:
        classes = [c for c in vm["classes"] if c["split"] == ds.split]
        assert len(ds) == vm["split_images"][ds.split]
        assert ds.num_classes == len(classes)
        assert ds.labels.dtype == np.int64 and set(np.unique(ds.labels)) == set(range(ds.num_classes))
        assert ds.code_points == sorted(ds.code_points)
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        by_cp = {parse_code_point(c["code_point"]): c["fonts"] for c in classes}
        assert [by_cp[cp] for cp in ds.code_points] == counts.tolist()
        assert ds.images.shape == (len(ds), 32, 32) and ds.images.dtype == np.uint8
        # one image per (class, font)
        pairs = set(zip(ds.labels.tolist(), ds.font_index.tolist()))
        assert len(pairs) == len(ds)
    train, test = full
    assert not set(train.code_points) & set(test.code_points)


def test_items_are_rgb_images_with_labels(full):
    train, _ = full
    image, label = train[17]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    arr = np.asarray(image)
    assert (arr[..., 0] == train.images[17]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert label == train.labels[17]
    assert train.class_names[label].startswith(f"U+{train.code_points[label]:04X} ")


def test_no_two_classes_coincide(full):
    """The look-alike rule holds on the output: for every pair of classes, the renderings of a font are
    pixel-identical (share of differing ink below the tolerance) in fewer than half of the fonts having both."""
    tol = load_manifest()["rules"]["class_tolerance"]
    images = np.concatenate([d.images for d in full]).reshape(-1, 32 * 32).astype(np.float32)
    cps = np.concatenate([np.asarray(d.code_points)[d.labels] for d in full])
    fonts = np.concatenate([d.font_index for d in full])
    classes = np.unique(cps)
    col = np.searchsorted(classes, cps)
    shared = np.zeros((len(classes), len(classes)))
    same = np.zeros((len(classes), len(classes)))
    for f in np.unique(fonts):
        rows = np.flatnonzero(fonts == f)
        ink = images[rows].sum(1)
        idx = col[rows]
        shared[np.ix_(idx, idx)] += 1
        # sum|a - b| >= |sum a - sum b|: only pairs with close ink totals can fall below the tolerance
        i, j = np.nonzero(np.abs(ink[:, None] - ink[None, :]) < tol * (ink[:, None] + ink[None, :]))
        rel = np.abs(images[rows[i]] - images[rows[j]]).sum(1) / (ink[i] + ink[j])
        np.add.at(same, (idx[i], idx[j]), rel < tol)
    np.fill_diagonal(same, 0)
    fraction = same / np.maximum(shared, 1)
    worst = np.unravel_index(fraction.argmax(), fraction.shape)
    assert fraction.max() < 0.5, f"{chr(classes[worst[0]])} / {chr(classes[worst[1]])} coincide in {fraction.max():.0%}"


def test_glyphs_keep_their_natural_size(full, load_script):
    """o and O of one font are different images: same baseline, O taller (no per-glyph stretching)."""
    relative_difference = load_script("make_glyph_manifest").relative_difference
    both = {}
    for ds in full:
        f = ds.font_names.index("DejaVuSans.ttf")
        for ch in "oOcCsS":
            if ord(ch) in ds.code_points:
                both[ch] = ds.images[(ds.font_index == f) & (ds.labels == ds.code_points.index(ord(ch)))][0]
    assert set(both) == set("oOcCsS")
    for small, capital in ("oO", "cC", "sS"):
        a, b = both[small], both[capital]
        assert relative_difference(a, b) > 0.2
        (top_a, bottom_a), (top_b, bottom_b) = _ink_rows(a), _ink_rows(b)
        assert abs(bottom_a - bottom_b) <= 1, "same baseline"
        assert (bottom_b - top_b) - (bottom_a - top_a) >= 4, "the capital is taller"


def test_render_glyphs_direct():
    path = next(p for e, p in locate_fonts("matplotlib") if e["file"] == "DejaVuSans.ttf")
    imgs = render_glyphs(path, 24.0, 24, "oOg", 32)
    assert imgs.shape == (3, 32, 32) and imgs.dtype == np.uint8
    (o_top, o_bottom), (big_top, big_bottom), (_, g_bottom) = (_ink_rows(i) for i in imgs)
    assert big_bottom in (23, 24) and abs(o_bottom - big_bottom) <= 1, "both sit on the baseline (row 24)"
    assert big_top < o_top and g_bottom > o_bottom + 3, "descender below the baseline"
    cols = np.flatnonzero(imgs[1].max(axis=0) > 0)
    assert abs((cols.min() + cols.max()) / 2 - 15.5) <= 1, "centred horizontally"


def test_rendering_is_deterministic(tmp_path):
    a = Glyphs(tmp_path / "a", "train", variant="matplotlib", progress=False)
    b = Glyphs(tmp_path / "b", "train", variant="matplotlib", progress=False)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.images, b.images)
    assert a.cache_path.name == b.cache_path.name


def test_cache_is_reused_without_rendering(tmp_path, monkeypatch):
    first = Glyphs(tmp_path, "test", variant="matplotlib", progress=False)
    mtime = first.cache_path.stat().st_mtime_ns

    def no_render(*args, **kwargs):
        raise AssertionError("rendered again although the cache exists")

    monkeypatch.setattr(glyphs, "render_variant", no_render)
    monkeypatch.setattr(glyphs, "locate_fonts", no_render)
    second = Glyphs(tmp_path, "train", variant="matplotlib", progress=False)
    third = Glyphs(tmp_path, "test", variant="matplotlib", progress=False)
    assert second.cache_path == first.cache_path and first.cache_path.stat().st_mtime_ns == mtime
    assert np.array_equal(third.images, first.images)


def test_matplotlib_variant_builds(tmp_path):
    vm = variant_manifest("matplotlib")
    train = Glyphs(tmp_path, "train", variant="matplotlib", progress=False)
    test = Glyphs(tmp_path, "test", variant="matplotlib", progress=False)
    assert len(train) + len(test) == vm["num_images"]
    assert train.num_classes + test.num_classes == vm["num_classes"]
    assert train.name == "glyphs_matplotlib" and len(train.font_names) == vm["num_fonts"]


def test_missing_fonts_error_names_the_packages(tmp_path):
    empty = tmp_path / "no-fonts"
    empty.mkdir()
    with pytest.raises(GlyphFontsError) as info:
        Glyphs(tmp_path / "cache", "train", font_dirs=[empty], progress=False)
    msg = str(info.value)
    assert "apt-get install" in msg and str(empty) in msg
    for package in variant_manifest("full")["packages"]:
        assert package in msg
    assert "variant='matplotlib'" in msg and "strict=False" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_font_with_other_checksum_is_an_error_or_skipped(tmp_path):
    fonts = tmp_path / "fonts"
    shutil.copytree(matplotlib_font_dir(), fonts)
    (fonts / "DejaVuSans-Bold.ttf").write_bytes((fonts / "DejaVuSans.ttf").read_bytes())
    with pytest.raises(GlyphFontsError, match="DejaVuSans-Bold.ttf") as info:
        Glyphs(tmp_path / "cache", "train", variant="matplotlib", font_dirs=[fonts], progress=False)
    assert "differ" in str(info.value) and "matplotlib==" in str(info.value)

    vm = variant_manifest("matplotlib")
    with pytest.warns(UserWarning, match="DejaVuSans-Bold.ttf"):
        train = Glyphs(tmp_path / "cache", "train", variant="matplotlib", font_dirs=[fonts], strict=False,
                       progress=False)
    assert "DejaVuSans-Bold.ttf" not in train.font_names
    bold = next(f for f in vm["fonts"] if f["file"] == "DejaVuSans-Bold.ttf")
    train_chars = {c["char"] for c in vm["classes"] if c["split"] == "train"}
    assert len(train) == vm["split_images"]["train"] - sum(ch in train_chars for ch in bold["chars"])
    complete = Glyphs(tmp_path / "cache", "train", variant="matplotlib", progress=False)
    assert complete.cache_path != train.cache_path and len(complete) == vm["split_images"]["train"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        Glyphs("unused", "val")
    with pytest.raises(ValueError, match="variant"):
        variant_manifest("system")


def test_cache_write_is_atomic_and_a_broken_cache_is_replaced(tmp_path):
    first = Glyphs(tmp_path, "train", variant="matplotlib", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]
    good = first.cache_path.read_bytes()
    for broken in (b"broken", good[: len(good) // 2]):
        first.cache_path.write_bytes(broken)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = Glyphs(tmp_path, "train", variant="matplotlib", progress=False)
        assert any("unreadable glyph cache" in str(w.message) for w in caught)
        assert np.array_equal(again.images, first.images)
        assert first.cache_path.read_bytes() == good
