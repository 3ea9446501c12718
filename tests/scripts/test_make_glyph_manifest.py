"""scripts/make_glyph_manifest.py: the look-alike measures the manifest's class rule is built on."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def manifest_script(load_script):
    return load_script("make_glyph_manifest")


def test_relative_difference_and_coincidence_by_hand(manifest_script):
    relative_difference = manifest_script.relative_difference
    coincidence_fractions = manifest_script.coincidence_fractions
    a = np.zeros((4, 4), np.uint8)
    a[1:3, 1:3] = 200                       # ink 800
    b = a.copy()
    b[1, 1] = 100                           # differs by 100
    assert relative_difference(a, a) == 0
    assert relative_difference(a, b) == pytest.approx(100 / 1500)
    assert relative_difference(np.zeros((4, 4)), np.zeros((4, 4))) == 0
    c = np.zeros((4, 4), np.uint8)
    c[0, :] = 255
    # 3 fonts x 3 classes; class 2 is missing in font 2
    images = np.stack([np.stack([a, a, c]), np.stack([a, b, c]), np.stack([a, c, np.zeros_like(a)])])
    present = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
    shared, fraction = coincidence_fractions(images, present, tolerance=0.05)
    assert shared[0, 1] == 3 and shared[0, 2] == 2 and shared[1, 2] == 2
    assert fraction[0, 1] == pytest.approx(1 / 3)   # identical in font 0 only (b differs by 6.7 % of the ink)
    assert fraction[0, 2] == 0 and fraction[2, 2] == 1
    _, loose = coincidence_fractions(images, present, tolerance=0.1)
    assert loose[0, 1] == pytest.approx(2 / 3)
