"""eval.py --report DIR: one HTML page that opens offline, rendered in a real headless browser (Debian's
Chromium, installed by scripts/system-deps.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from PIL import Image

from pygml.app.cli import eval_main, train_main
from tests.image_trees import make_tree

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: as root and without a network: no sandbox, no GPU, none of Chromium's background connections
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
HIT_GREEN = (0x1A, 0x98, 0x50)


pytestmark = pytest.mark.usefixtures("pygml_log_handlers_removed")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of a short run on an In-Shop-style folder (train, query and gallery classes)."""
    root = tmp_path_factory.mktemp("report")
    shop = make_tree(root / "shop", splits={"train": range(4), "query": range(4, 8), "gallery": range(4, 8)},
                     corrupt=False, singleton=False)
    overrides = ["data.name=folder", f"data.root={shop}", "data.image_size=16", "model.width=8",
                 "model.embedding_dim=16", "train.classes_per_batch=4", "train.samples_per_class=2", "train.epochs=1",
                 "train.max_steps_per_epoch=2", "train.progress=false", "eval.nmi=false", f"train.out_dir={root / 'run'}"]
    assert train_main(overrides) == 0
    assert eval_main(["--checkpoint", str(root / "run" / "checkpoint.pt"), "--report", str(root / "report")]) == 0
    return root / "report" / "index.html"


def test_the_report_holds_metrics_curve_examples_worst_queries_and_config(report):
    page = report.read_text(encoding="utf-8")
    assert "<title>pygml evaluation: baseline on folder</title>" in page
    for section in ("Metrics (%)", "Recall@K", "Retrieval examples (6 random test queries)", "Worst queries (6)",
                    "Config"):
        assert f"<h2>{section}</h2>" in page
    assert re.search(r"<td>recall@1</td><td>\d+\.\d\d</td>", page)
    assert "20 queries against a gallery of 20 images (4 classes)" in page
    assert page.count('src="data:image/png;base64,') == 1  # the Recall@K curve
    assert page.count('src="data:image/jpeg;base64,') == 2 * 6 * 9  # 12 rows: a query and its 8 neighbours
    assert "✓ hit" in page and "first of its class at rank" in page
    assert "name: folder" in page and "embedding_dim: 16" in page
    assert "src=\"http" not in page and "src=\"file" not in page, "everything is inside the page"
    assert [p.name for p in report.parent.iterdir()] == ["index.html"]


def chromium(*args: str, profile, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian packages chromium and chromium-driver; "
                                             "`make system-deps` installs them, and CI does)")
def test_the_report_renders_in_a_headless_browser(report, tmp_path):
    url = report.resolve().as_uri()
    shot = tmp_path / "report.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1280,2400", url, profile=tmp_path / "profile-1")
    assert shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    colours = image.getcolors(maxcolors=1 << 20)
    inked = sum(n for n, c in colours if sum(c) < 3 * 240)
    assert len(colours) > 500 and inked > 0.05 * image.width * image.height, "the page is not blank"
    assert sum(n for n, c in colours if c == HIT_GREEN) > 200, "the hit frames of the retrieval examples show"
    dom = chromium("--dump-dom", "--virtual-time-budget=10000", url, profile=tmp_path / "profile-2").stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None, dom[:2000]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    broken = re.search(r'data-images-broken="(\d+)"', body.group(0))
    assert loaded and broken, f"the page's load check did not run: {body.group(0)}"
    assert (int(loaded.group(1)), int(broken.group(1))) == (1 + 2 * 6 * 9, 0), "every image loads"
