"""An installed wheel of pygml: imports without the repository, finds its shipped configs by short name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """pygml built as a wheel and installed (without its dependencies) into a folder of its own."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in the environment")
    dist, target = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(dist)], check=True,
                   capture_output=True)
    wheel = next(dist.glob("pygml-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    return target


def run_installed(site: Path, code: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_wheel_ships_configs_found_by_short_name(installed, tmp_path):
    out = run_installed(installed, (
        "import pygml\n"
        "from pygml.app.config import load_config\n"
        "from pygml.app.cli import train_main\n"
        "print(pygml.__file__)\n"
        "print(load_config('bgformer/glyphs').method, load_config('intra_batch/cub.yaml').model.backbone)\n"
        "train_main(['--config', 'proxygml/glyphs', '--print-config'])\n"), cwd=tmp_path)
    lines = out.splitlines()
    assert lines[0].startswith(str(installed))  # the installed copy, not the repository
    assert lines[1] == "bgformer resnet50"
    assert "method: proxygml" in out and "proxies_per_class: 12" in out


def test_the_wheel_holds_no_repository_scripts(installed):
    assert not (installed / "pygml" / "results.py").exists()
    assert not (installed / "pygml" / "data" / "make_glyph_manifest.py").exists()
    assert len(list((installed / "pygml" / "configs").glob("*/*.yaml"))) == len(list((ROOT / "configs").glob("*/*.yaml")))


def test_a_missing_config_lists_the_shipped_ones():
    from pygml.app.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"config file not found: nope/glyphs; .*baseline/glyphs"):
        load_config("nope/glyphs")
