"""A new user's first hour: mistakes found before any training, errors that name the key and the value typed,
records that say how their numbers were made, a library that leaves the process's warnings alone."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pandas as pd
import pytest

from pygml.app.cli import eval_main, train_main
from pygml.app.config import ConfigError, load_config
from pygml.app.engine import train


@pytest.mark.parametrize("override, says", [
    ("train.epochs=0", r"'train.epochs' is 0; expected a positive"),
    ("train.epochs=-1", r"'train.epochs' is -1"),
    ("train.max_steps_per_epoch=-3", r"'train.max_steps_per_epoch' is -3"),
    ("train.amp=yes", r"'train.amp' is 'True' \(YAML reads yes/no"),
    ("eval.recall_at=5", r"'eval.recall_at' \(typed: eval.recall_at=5\): expected a list"),
    ("eval.recall_at=[1,0]", r"'eval.recall_at' is \[1, 0\]"),
    ("model.pooling=mean", r"'model.pooling' is 'mean'; expected one of avg, max, avgmax"),
])
def test_bad_values_name_the_key_and_the_value(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, [override])


def test_a_constructor_error_names_the_method_key(tiny_config):
    from pygml.app.builders import build_method

    with pytest.raises(ConfigError, match=r"config key 'intra_batch.heads'.*heads=3"):
        build_method(tiny_config("method=intra_batch", "intra_batch.heads=3"), num_classes=5)


@pytest.mark.parametrize("override, says", [
    ("eval.recall_at=[1,5000]", r"'eval.recall_at' asks for K=5000, but the test gallery .* has 895 images"),
    ("eval.search=IVFnope", r"'eval.search'"),
    ("model.backbone=resnet50", None),  # with model.pretrained below: the weights file, before any data
    ("train.classes_per_batch=9", r"'train.classes_per_batch'"),
])
def test_mistakes_are_found_before_any_training(tiny_config, tmp_path, override, says, monkeypatch):
    import pygml.app.engine as engine

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(engine, "train_one_epoch", no_training)
    extra = ("model.pretrained=weights/resnet50-0676ba61.pth",) if "resnet50" in override else ()
    error = FileNotFoundError if extra else ConfigError
    with pytest.raises(error, match=says or r"resnet50-0676ba61.pth.*download.pytorch.org.*sha256 0676ba61"):
        train(tiny_config(override, *extra))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_overrides_may_come_between_and_after_flags(tiny_overrides, tmp_path, capsys):
    assert train_main(["train.epochs=3", "--print-config", "train.seed=5", "--config", "baseline/glyphs",
                       "train.eval_every=3"]) == 0
    printed = capsys.readouterr().out
    assert "epochs: 3" in printed and "seed: 5" in printed and "eval_every: 3" in printed


def test_an_approximate_search_is_recorded_beside_its_numbers(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*tiny_overrides, "train.epochs=1", "eval.search=Flat", "eval.nprobe=4",
                       f"train.out_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "approximate search: faiss index 'Flat', nprobe 4" in printed
    assert json.loads((out / "metrics.json").read_text())["eval"] == {"search": "Flat", "nprobe": 4}
    log = pd.read_csv(out / "log.csv")
    assert log["eval_search"].tolist() == ["Flat"] and log["eval_nprobe"].tolist() == [4]
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "eval.search=exact"]) == 0
    printed = capsys.readouterr().out
    assert "approximate search:" not in printed
    assert json.loads((out / "eval_metrics.json").read_text())["eval"] == {"search": "exact"}


def test_knn_homophily_is_explained_where_it_is_printed(tiny_overrides, tmp_path, capsys):
    assert train_main([*tiny_overrides, "train.epochs=1", f"train.out_dir={tmp_path}"]) == 0
    printed = capsys.readouterr().out
    assert "knn_homophily" in printed and "knn_homophily: in P×K batches of test images" in printed


def test_a_run_records_its_data_and_eval_refuses_other_data(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*tiny_overrides, "train.epochs=1", f"train.out_dir={out}"]) == 0
    assert "data.name=digits (data.root=None: train 901 images / 5 classes" in capsys.readouterr().err
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt"), "data.name=glyphs_matplotlib",
                      "data.image_size=16"]) == 2
    err = capsys.readouterr().err
    assert "was trained and tested on data.name=digits" in err and "data.name=glyphs_matplotlib" in err


def test_an_image_folder_named_as_the_glyphs_root_is_refused(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"not glyphs")
    # the run's directory, locked before the data is read, is listed beside the photo, and removed after
    with pytest.raises(ConfigError,
                       match=r"holds files that are not glyph caches \(photo.jpg, run\).*data.name=folder"):
        train(load_config(None, [f"data.root={tmp_path}", f"train.out_dir={tmp_path / 'run'}"]))
    assert [p.name for p in tmp_path.iterdir()] == ["photo.jpg"]  # nothing written into the user's folder


def test_importing_pygml_leaves_the_warning_filters_alone():
    code = ("import warnings; before = list(warnings.filters); import pygml, pygml.app, pygml.nn, pygml.app.engine; "
            "print(before == warnings.filters)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert "torch.jit.script" not in out.stderr  # PyG's import warnings are silenced for that import only


def test_training_steps_warn_nothing(tiny_config):
    """No warning per step: ProxyGML's logged losses are detached, no deprecation in the loop."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(tiny_config("method=proxygml", "proxygml.proxies_per_class=2", "proxygml.r=0.5",
                          "proxygml.warmup_epochs=0", "train.epochs=1"))
