"""Hyper-parameter search with Optuna: ``pygml-tune`` / ``python tune.py``.

A search is a run config, a **space** (YAML: config key → how to draw it) and a fixed number of trials.
Each trial is a training run of the engine (:func:`pygml.app.engine.train`) with the drawn values, scored
on the validation split carved from the training classes (``data.val_fraction``) by one of the
evaluator's metrics (MAP@R by default). The test split is dropped unread in every trial
(``train(cfg, test=False)``): nothing here looks at the test classes.

The space file beside a method's config (``configs/<method>/<dataset>.tune.yaml``)::

    optim.lr:            {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    baseline.temperature: {type: float, low: 0.02, high: 0.2, log: true}
    intra_batch.layers:  {type: int, low: 1, high: 3}
    miner.name:          {type: categorical, choices: [null, "pml:MultiSimilarityMiner"]}

Trial 0 runs the config's own values (those that lie in the space; the others are drawn), so a search never
ends below the config it started from on the validation split; a resumed study runs them again when their
trial was cut short or failed. The study lives in ``<out>/study.db`` (Optuna's SQLite storage): running the same command again
continues it up to the number of trials asked for. Written to ``<out>``: ``trials/<n>/`` (each trial's
run), ``trials.csv`` (one row per trial: number, state, value, parameters, time) and ``best.yaml`` (the
full config with the best trial's values; ``train.out_dir`` unset, the validation split kept).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf

from pygml.app.config import SPACE_SUFFIX, ConfigError, apply_overrides, config_to_yaml, load_config
PARAM_TYPES = ("float", "int", "categorical")
#: Optuna's study name inside ``study.db``
STUDY_NAME = "pygml-tune"


@dataclass(frozen=True)
class Param:
    """One dimension of a search space: the config key and how Optuna draws its value."""

    key: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[tuple[Any, ...]] = None

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.key, list(self.choices))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the space's values."""
        if self.type == "categorical":
            return value in self.choices
        numbers = (int,) if self.type == "int" else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool) and self.low <= value <= self.high

    def ends(self) -> tuple[Any, ...]:
        """Every choice, or both ends of the range: what is checked against the config before any trial."""
        if self.type == "categorical":
            return self.choices
        return (int(self.low), int(self.high)) if self.type == "int" else (self.low, self.high)


_FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
           "categorical": {"choices"}}


def _param(key: str, spec: Any, where: str) -> Param:
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"search space {where}: key '{key}': {msg}")

    if not isinstance(spec, dict):
        raise bad(f"expected a mapping such as {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise bad(f"type is {kind!r}; expected one of {', '.join(PARAM_TYPES)}")
    unknown = sorted(set(spec) - {"type"} - _FIELDS[kind])
    if unknown:
        raise bad(f"{unknown[0]!r} is not a field of a {kind} parameter; it has {', '.join(sorted(_FIELDS[kind]))}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad("a categorical parameter needs a non-empty list of choices")
        if any(not (c is None or isinstance(c, (bool, int, float, str))) for c in choices):
            raise bad(f"choices must be null, booleans, numbers or strings, got {choices!r}")
        return Param(key, kind, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    numbers = (int,) if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers):
            raise bad(f"{name} is {value!r}; a {kind} parameter needs a {kind} {name}")
    if not low < high:
        raise bad(f"low ({low}) must be below high ({high})")
    if not isinstance(log, bool):
        raise bad(f"log is {log!r}; expected true or false")
    if log and low <= 0:
        raise bad(f"a log-scale range needs low > 0, got {low}")
    if step is not None and (log or isinstance(step, bool) or not isinstance(step, numbers) or step <= 0):
        raise bad(f"step is {step!r}; expected a positive {kind}, and no step on a log scale")
    return Param(key, kind, float(low), float(high), log, step)


def load_space(paths: Sequence[str | Path], cfg: Any) -> list[Param]:
    """The parameters of one or more space files, each key checked against ``cfg`` (a key the config does not
    have, or a value it does not accept, is a :class:`ConfigError` naming the key)."""
    params: dict[str, Param] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"search space file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"search space {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict) or not data:
            raise ConfigError(f"search space {path}: expected a mapping of config keys to parameters, got {data!r}")
        for key, spec in data.items():
            if key in params:
                raise ConfigError(f"search space {path}: key '{key}' is already in {paths[0]}")
            params[key] = _param(str(key), spec, str(path))
    if not params:
        raise ConfigError("the search space is empty: give a --space file")
    for p in params.values():
        for value in p.ends():
            try:
                apply_overrides(cfg, overrides([(p.key, value)]))
            except ConfigError as err:
                raise ConfigError(f"search space key '{p.key}': the value {value!r} does not fit the config: "
                                  f"{err}") from None
    return list(params.values())


def overrides(values: Sequence[tuple[str, Any]]) -> list[str]:
    """``key=value`` overrides of drawn values (JSON literals, which YAML reads back as they were)."""
    return [f"{k}={json.dumps(v)}" for k, v in values]


def default_space(config: str | Path) -> Path:
    """``configs/<method>/<dataset>.tune.yaml`` beside ``configs/<method>/<dataset>.yaml``."""
    path = Path(config)
    return path.with_name(path.name.removesuffix(path.suffix) + SPACE_SUFFIX)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ImportError("pygml-tune needs Optuna: pip install 'pygml[tune]'") from None
    return optuna


#: ``--sampler`` choices: Optuna's TPE (random for its first 10 trials, then model-based), scrambled Sobol points
#: (quasi-random: even a few trials spread over the whole space), or plain random sampling
SAMPLERS = ("tpe", "qmc", "random")


def make_sampler(name: str, seed: int = 0) -> Any:
    """The Optuna sampler ``name`` (one of :data:`SAMPLERS`), seeded."""
    optuna = _optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "qmc":
        with warnings.catch_warnings():  # experimental in Optuna 5: its interface may change, its draws do not
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                              warn_independent_sampling=False, warn_asynchronous_seeding=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"--sampler is {name!r}; expected one of {', '.join(SAMPLERS)}")


def tune(cfg: Any, space: Sequence[Param], out: str | Path, *, trials: int, metric: str = "mean_average_precision_at_r",
         sampler_seed: int = 0, sampler: str = "tpe", progress: bool = True) -> dict[str, Any]:
    """Run (or continue) the study of ``cfg`` over ``space`` in ``out`` until ``trials`` trials have ended, drawing
    with ``sampler`` (:data:`SAMPLERS`; a study continues only with the sampler it was started with).

    Returns ``{"best_value", "best_params", "best_config" (the config object), "trials" (the table),
    "ran" (trials run by this call)}``."""
    from pygml.app.engine import NonFiniteLossError, train
    from pygml.app.reports import log

    optuna = _optuna()
    if trials < 1:
        raise ConfigError(f"--trials is {trials}; expected a positive number of trials")
    if cfg.data.val_fraction <= 0:
        raise ConfigError("tuning scores trials on a validation split carved from the training classes: set "
                          "data.val_fraction (e.g. data.val_fraction=0.2); the test classes are never used")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{(out / 'study.db').resolve()}",
                                direction="maximize", load_if_exists=True,
                                sampler=make_sampler(sampler, sampler_seed))
    drawn = {"sampler": sampler, "sampler_seed": sampler_seed}
    if not study.trials:
        for key, value in drawn.items():
            study.set_user_attr(key, value)
    # a study from before the sampler was recorded was drawn by TPE, with a seed not recorded
    started = {**drawn, "sampler": "tpe", **study.user_attrs}
    if any(started[k] != v for k, v in drawn.items()):
        raise ConfigError(f"{out / 'study.db'} was started with --sampler {started['sampler']} --sampler-seed "
                          f"{started['sampler_seed']}; continue it with those, or pass another --out")
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    done = len(study.get_trials(deepcopy=False, states=ended))
    todo = max(trials - done, 0)
    # the config's own values (those in the space) run first, and run again on resuming when their trial was
    # cut short or failed
    start = {p.key: v for p in space if p.contains(v := OmegaConf.select(OmegaConf.structured(cfg), p.key))}
    kept = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING)
    if todo and start and not any(t.params == start and t.state in kept for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial(start)
    if done:
        log.info("%s: %d of %d trials already ended; running %d more", out / "study.db", done, trials, todo)

    def objective(trial: Any) -> float:
        values = [(p.key, p.suggest(trial)) for p in space]
        run_cfg = apply_overrides(cfg, [*overrides(values), f"train.out_dir={out / 'trials' / str(trial.number)}",
                                        "train.progress=false"])
        result = train(run_cfg, test=False)
        if metric not in result.get("val", {}):
            raise ConfigError(f"--metric {metric!r} is not among the validation metrics: "
                              f"{', '.join(sorted(result.get('val', {})))}")
        value = float(result["val"][metric])
        if not math.isfinite(value):
            raise ValueError(f"trial {trial.number}: validation {metric} is {value}")
        return value

    def report(study: Any, trial: Any) -> None:
        best = study.best_value if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) else None
        log.info("trial %d %s: %s %s (best %s) %s", trial.number, trial.state.name.lower(), metric,
                 "-" if trial.value is None else f"{trial.value:.4f}", "-" if best is None else f"{best:.4f}",
                 trial.params)

    if todo:
        study.optimize(objective, n_trials=todo, callbacks=[report], catch=(NonFiniteLossError,),
                       show_progress_bar=progress)
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration"))
    table = table.rename(columns={"value": metric, **{c: c[len("params_"):] for c in table.columns
                                                       if c.startswith("params_")}})
    if "duration" in table:
        table["duration"] = table["duration"].dt.total_seconds()
        table = table.rename(columns={"duration": "time_s"})
    table.to_csv(out / "trials.csv", index=False)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"no trial of {out / 'study.db'} completed; see {out / 'trials.csv'}")
    best = max(complete, key=lambda t: t.value)
    best_cfg = apply_overrides(cfg, [*overrides([(p.key, best.params[p.key]) for p in space]), "train.out_dir=null",
                                     f"train.progress={json.dumps(cfg.train.progress)}"])
    (out / "best.yaml").write_text(config_to_yaml(best_cfg))
    return {"best_value": best.value, "best_params": dict(best.params), "best_number": best.number,
            "best_config": best_cfg, "trials": table, "ran": todo}


def tune_main(argv: Optional[Sequence[str]] = None) -> int:
    from pygml.app.cli import _common, _run, import_modules
    from pygml.app.reports import log

    parser = argparse.ArgumentParser(
        prog="pygml-tune",
        description="Search a method's hyper-parameters with Optuna on a validation split carved from the training "
                    "classes (never the test classes). Example: python tune.py --config configs/baseline/glyphs.yaml "
                    "--trials 8 --out runs/tune-baseline data.val_fraction=0.2. Run it again to continue the study.")
    parser.add_argument("--config", "-c", required=True, help="the run's YAML config")
    parser.add_argument("--space", action="append", metavar="YAML",
                        help="search space file (repeatable); default: <config>.tune.yaml beside the config")
    parser.add_argument("--trials", type=int, required=True, help="trials in all (a resumed study runs the rest)")
    parser.add_argument("--out", required=True, help="folder of the study: study.db, trials/, trials.csv, best.yaml")
    parser.add_argument("--metric", default="mean_average_precision_at_r",
                        help="validation metric to maximise (default: mean_average_precision_at_r)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                        help="how trials are drawn: tpe (Optuna's default), qmc (scrambled Sobol points: spread over "
                             "the space even with a few trials), random")
    parser.add_argument("--sampler-seed", type=int, default=0, help="seed of the sampler")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(parser)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        import_modules(args.imports)
        cfg = load_config(args.config, args.overrides)
        space = load_space(args.space or [default_space(args.config)], cfg)
        result = tune(cfg, space, args.out, trials=args.trials, metric=args.metric, sampler_seed=args.sampler_seed,
                      sampler=args.sampler, progress=not args.no_progress)
        print(result["trials"].to_string(index=False))
        print(f"\nbest: trial {result['best_number']}, validation {args.metric} {result['best_value']:.4f}, "
              f"{result['best_params']}")
        log.info("written: %s, %s", Path(args.out) / "trials.csv", Path(args.out) / "best.yaml")
        return 0

    return _run(body)


__all__ = ["PARAM_TYPES", "Param", "SAMPLERS", "SPACE_SUFFIX", "default_space", "load_space", "make_sampler", "overrides",
           "tune", "tune_main"]
