"""pygml.app.tune: the Optuna search on a validation split, its files, resuming, the space file's errors, and
the guarantee that no trial reads the test split."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pygml.app.config import PACKAGED_CONFIGS, SPACE_SUFFIX, ConfigError, load_config
from pygml.app.engine import train
from pygml.app.registry import DATASETS

optuna = pytest.importorskip("optuna")

from pygml.app.tune import default_space, load_space, tune, tune_main  # noqa: E402  (needs optuna)

#: 5 digit classes in training: 2 held out for validation, 3 left to train on (P = 3)
SEARCH = ("data.name=digits_guarded", "data.val_fraction=0.4", "train.classes_per_batch=3", "train.epochs=1",
          "train.max_steps_per_epoch=2")


class Untouchable:
    """A test split that fails the run the moment anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self):
        raise AssertionError("the test split was read (len)")

    def __getitem__(self, i):
        raise AssertionError("the test split was read (an item)")


@pytest.fixture
def guarded(restore_registries, tiny_config):
    """``digits_guarded``: the digits dataset whose test split raises on any access."""
    from pygml.app.builtins import _digits

    def build(data, train_tf, test_tf):
        splits = _digits(data, train_tf, test_tf)
        splits.query = Untouchable()
        return splits

    DATASETS.register("digits_guarded", build)
    return lambda *o, out_dir=None: tiny_config(*SEARCH, *o, out_dir=out_dir)


def space_file(tmp_path: Path, space: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space))
    return path


SPACE = {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},  # the config's 1e-3 inside
         "baseline.temperature": {"type": "categorical", "choices": [0.05, 0.1]}}


def test_the_guard_fails_a_run_that_reads_the_test_split(guarded, tmp_path):
    with pytest.raises(AssertionError, match="the test split was read"):
        train(guarded(out_dir=tmp_path / "run"))
    result = train(guarded(out_dir=tmp_path / "val-only"), test=False)
    assert "test" not in result and 0 <= result["val"]["mean_average_precision_at_r"] <= 1


def test_two_trials_write_their_table_and_the_best_config_without_the_test_split(guarded, tmp_path):
    cfg = guarded()
    result = tune(cfg, load_space([space_file(tmp_path, SPACE)], cfg), tmp_path / "study", trials=2, progress=False)
    table = pd.read_csv(tmp_path / "study" / "trials.csv")
    assert list(table.number) == [0, 1] and set(table.state) == {"COMPLETE"}
    assert {"mean_average_precision_at_r", "optim.lr", "baseline.temperature", "time_s"} <= set(table.columns)
    assert table.mean_average_precision_at_r.max() == pytest.approx(result["best_value"])
    for n in (0, 1):  # each trial is an engine run of its own, scored on the validation split only
        metrics = pd.read_csv(tmp_path / "study" / "trials" / str(n) / "log.csv")
        assert "val_mean_average_precision_at_r" in metrics and not any(c.startswith("test_") for c in metrics)
    best = load_config(tmp_path / "study" / "best.yaml")
    assert best.optim.lr == pytest.approx(result["best_params"]["optim.lr"])
    assert best.baseline.temperature == result["best_params"]["baseline.temperature"]
    assert best.data.val_fraction == 0.4 and best.train.out_dir is None and best.train.epochs == 1
    assert table["optim.lr"][0] == pytest.approx(cfg.optim.lr), "trial 0 runs the config's own values"
    assert table["baseline.temperature"][0] == cfg.baseline.temperature


def test_running_again_continues_the_study(guarded, tmp_path):
    cfg = guarded()
    space = load_space([space_file(tmp_path, SPACE)], cfg)
    first = tune(cfg, space, tmp_path / "study", trials=1, progress=False)
    again = tune(cfg, space, tmp_path / "study", trials=2, progress=False)
    assert (first["ran"], again["ran"]) == (1, 1)
    table = pd.read_csv(tmp_path / "study" / "trials.csv")
    assert list(table.number) == [0, 1]
    assert table["optim.lr"][0] == pytest.approx(first["trials"]["optim.lr"][0]), "trial 0 is kept, not redrawn"
    assert tune(cfg, space, tmp_path / "study", trials=2, progress=False)["ran"] == 0


def test_the_command_line_tunes_and_prints_the_best(guarded, tiny_overrides, tmp_path, capsys):
    space = space_file(tmp_path, SPACE)
    code = tune_main(["--config", "baseline/glyphs", "--space", str(space), "--trials", "1", "--out",
                      str(tmp_path / "cli"), "--no-progress", *tiny_overrides, *SEARCH])
    assert code == 0
    out = capsys.readouterr().out
    assert "best: trial 0, validation mean_average_precision_at_r" in out
    assert (tmp_path / "cli" / "best.yaml").is_file() and (tmp_path / "cli" / "trials.csv").is_file()


@pytest.mark.parametrize("space, match", [
    ({"optim.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, r"key 'optim\.lrr'"),
    ({"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, r"key 'optim\.lr': low .* must be below high"),
    ({"optim.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}, r"key 'optim\.lr': a log-scale"),
    ({"optim.lr": {"type": "uniform", "low": 0.0, "high": 1.0}}, r"key 'optim\.lr': type is 'uniform'"),
    ({"optim.lr": {"type": "float", "low": 1e-4, "hi": 1e-2}}, r"key 'optim\.lr': 'hi' is not a field"),
    ({"train.epochs": {"type": "int", "low": 1.5, "high": 3}}, r"key 'train\.epochs': low is 1\.5"),
    ({"optim.name": {"type": "categorical", "choices": []}}, r"key 'optim\.name': .*non-empty list"),
    ({"optim.name": {"type": "categorical", "choices": ["adam", "lion"]}}, r"key 'optim\.name'"),
    ({"optim.lr": 0.001}, r"key 'optim\.lr': expected a mapping"),
])
def test_a_bad_space_is_a_config_error_naming_the_key(tmp_path, space, match):
    cfg = load_config(None, ["data.val_fraction=0.2"])
    with pytest.raises(ConfigError, match=match):
        load_space([space_file(tmp_path, space)], cfg)


def test_tuning_without_a_validation_split_is_refused(tmp_path):
    cfg = load_config(None)
    with pytest.raises(ConfigError, match="data.val_fraction"):
        tune(cfg, load_space([space_file(tmp_path, SPACE)], cfg), tmp_path, trials=1, progress=False)


@pytest.mark.parametrize("space", sorted(PACKAGED_CONFIGS.glob(f"*/*{SPACE_SUFFIX}")), ids=lambda p: p.parent.name)
def test_every_shipped_space_fits_its_config(space):
    config = space.with_name(space.name.removesuffix(SPACE_SUFFIX) + ".yaml")
    assert default_space(config) == space
    assert load_space([space], load_config(config, ["data.val_fraction=0.2"]))


def test_a_resumed_study_runs_the_config_s_values_when_their_trial_was_cut_short(guarded, tmp_path, monkeypatch):
    import pygml.app.engine as engine

    cfg = guarded()
    space = load_space([space_file(tmp_path, SPACE)], cfg)
    real_train = engine.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, space, tmp_path / "study", trials=3, progress=False)
    monkeypatch.setattr(engine, "train", real_train)
    tune(cfg, space, tmp_path / "study", trials=3, progress=False)
    table = pd.read_csv(tmp_path / "study" / "trials.csv")
    assert list(table.state) == ["FAIL", "COMPLETE", "COMPLETE"]
    assert table["optim.lr"][1] == pytest.approx(cfg.optim.lr) and table["optim.lr"][2] != pytest.approx(cfg.optim.lr)


def test_a_few_qmc_trials_spread_over_the_whole_range():
    from pygml.app.tune import make_sampler

    for seed in range(3):  # after trial 0 (the config's values, as tune() enqueues them), the first 4 scrambled
        study = optuna.create_study(direction="maximize", sampler=make_sampler("qmc", seed))  # Sobol points fall
        study.enqueue_trial({"lr": 1e-3, "m": 0.5})  # one in each quarter of every axis
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) + t.suggest_float("m", 0.0, 1.0),
                       n_trials=5)
        for key, to_unit in (("lr", lambda v: (np.log10(v) + 4) / 2), ("m", lambda v: v)):
            quarters = sorted(int(4 * to_unit(t.params[key])) for t in study.trials[1:])
            assert quarters == [0, 1, 2, 3], (seed, key, quarters)


def test_a_study_continues_only_with_its_own_sampler(guarded, tmp_path):
    from pygml.app.tune import make_sampler

    cfg = guarded()
    space = load_space([space_file(tmp_path, SPACE)], cfg)
    tune(cfg, space, tmp_path / "study", trials=1, sampler="qmc", sampler_seed=3, progress=False)
    for other in ({"sampler": "tpe", "sampler_seed": 3}, {"sampler": "qmc", "sampler_seed": 0}):
        with pytest.raises(ConfigError, match="was started with --sampler qmc --sampler-seed 3"):
            tune(cfg, space, tmp_path / "study", trials=2, progress=False, **other)
    assert tune(cfg, space, tmp_path / "study", trials=1, sampler="qmc", sampler_seed=3, progress=False)["ran"] == 0
    with pytest.raises(ConfigError, match="--sampler is 'grid'"):
        make_sampler("grid")
