"""The results grid: does the batch graph help the loss a user already has?

    python scripts/results.py --trials 3 --seeds 0 1 2 --jobs 2     # glyphs at its budget (GLYPHS_BUDGET)
    python scripts/results.py --collect            # no training: the report of the runs already finished

For every base loss (normalized softmax, pytorch-metric-learning's MultiSimilarity with its miner and
ProxyAnchor, and each paper's own loss) and every graph (off, + Intra-Batch's MPN, + BGFormer's blocks),
one **cell**:

1. ``pygml-tune`` searches the cell's space (the optimiser's lr, the loss's main parameter, the graph's
   weight) with the same number of trials for every cell, each trial scored by MAP@R on a validation split
   carved from the training classes (``data.val_fraction``); the test classes are never read;
2. the best config is trained again on all training classes with each seed and evaluated once, after the
   last epoch, on the test classes.

Every run is ``tune.py`` / ``train.py`` with a shipped config and overrides, so each number can be
reproduced with the command printed in the report; the study and runs of a cell are reused when the script
runs again (a study continues, a finished run is kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing pygml
    sys.path.insert(0, str(ROOT))

LR = {"optim.lr": {"type": "float", "low": 3.0e-4, "high": 3.0e-3, "log": True}}


@dataclass(frozen=True)
class Part:
    """A base loss or a graph: its overrides and what of it is tuned."""

    name: str
    overrides: tuple[str, ...] = ()
    space: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.name)


#: base losses put under any graph; the values set here are the losses' published defaults (trial 0)
LOSSES = (
    Part("normalized softmax", ("loss.name=normalized_softmax", "loss.options.temperature=0.05"),
         {"loss.options.temperature": {"type": "float", "low": 0.02, "high": 0.2, "log": True}}),
    Part("MultiSimilarity + miner", ("loss.name=pml:MultiSimilarityLoss", "loss.options.alpha=2", "loss.options.beta=50",
                                     "loss.options.base=0.5", "miner.name=pml:MultiSimilarityMiner",
                                     "miner.options.epsilon=0.1"),
         {"loss.options.base": {"type": "float", "low": 0.3, "high": 0.8}}),
    Part("ProxyAnchor", ("loss.name=pml:ProxyAnchorLoss", "loss.options.margin=0.1", "loss.options.alpha=32",
                         "loss.lr=0.01"),
         {"loss.options.margin": {"type": "float", "low": 0.0, "high": 0.3}}),
    # ProxyGML's paper values (N = 12, r = 0.05, λ = 0.3, proxy lr 0.03) as a base loss on the shared config
    Part("ProxyGML", ("loss.name=proxygml", "loss.options.proxies_per_class=12", "loss.options.r=0.05",
                      "loss.options.lambda_reg=0.3", "loss.lr=0.03"),
         {"loss.options.r": {"type": "float", "low": 0.02, "high": 0.2, "log": True}}),
)

#: graphs put on top of any base loss, all on the baseline's glyphs config (same optimiser, same head); the
#: graph modules' values are those of their own glyphs configs
GRAPHS = (
    Part("off", ("method=baseline",)),
    Part("+ Intra-Batch MPN", ("method=intra_batch", "intra_batch.layers=1", "intra_batch.heads=2",
                               "intra_batch.dropout=0.1")),
    Part("+ BGFormer blocks", ("method=bgformer", "bgformer.depth=1", "bgformer.heads=4", "bgformer.k=10",
                               "bgformer.mix=0.5", "bgformer.alpha=0.5", "bgformer.variant=v1",
                               "bgformer.graph=attention_topk", "bgformer.block_lr=1.0e-3"),
         {"bgformer.alpha": {"type": "float", "low": 0.1, "high": 0.9}}),
)


@dataclass(frozen=True)
class Cell:
    loss: str
    graph: str
    config: str
    overrides: tuple[str, ...]
    space: dict[str, Any]

    @property
    def slug(self) -> str:
        return _slug(f"{self.loss} {self.graph}")


def _cells() -> list[Cell]:
    common = ("model.head_init=kaiming",)
    cells = [Cell(loss.name, graph.name, "configs/baseline/glyphs.yaml", (*graph.overrides, *common, *loss.overrides),
                  {**LR, **loss.space, **graph.space}) for loss in LOSSES for graph in GRAPHS]
    ib_t = {"intra_batch.temperature": {"type": "float", "low": 0.05, "high": 0.5, "log": True}}
    bg_tau = {"bgformer.temperature": {"type": "float", "low": 0.05, "high": 0.5, "log": True}}
    paper_ib, paper_bg = "paper: Intra-Batch's CE", "paper: BGFormer's pairwise InfoNCE"
    cells += [
        Cell(paper_ib, "off", "configs/intra_batch/glyphs.yaml", ("intra_batch.mpn=false",), {**LR, **ib_t}),
        Cell(paper_ib, "+ Intra-Batch MPN", "configs/intra_batch/glyphs.yaml", (), {**LR, **ib_t}),
        # the release's loss, BGFormer's default (τ = bgformer.temperature)
        Cell(paper_bg, "off", "configs/bgformer/glyphs.yaml", ("bgformer.alpha=1.0",), {**LR, **bg_tau}),
        Cell(paper_bg, "+ BGFormer blocks", "configs/bgformer/glyphs.yaml", (), {**LR, **bg_tau, **GRAPHS[2].space}),
    ]
    return cells


CELLS: tuple[Cell, ...] = tuple(_cells())
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "mean_average_precision_at_r", "r_precision", "NMI")
HEADERS = ("R@1", "R@2", "R@4", "R@8", "MAP@R", "RP", "NMI")
#: the budget of every glyphs run (docs/results.md says why): 6 epochs of 30 P×K batches, evaluated after the last
GLYPHS_BUDGET = ("train.epochs=6", "train.max_steps_per_epoch=30", "train.eval_every=6")
#: how pygml-tune draws a cell's trials after trial 0 (the starting values): scrambled Sobol points, so that even 2
#: draws fall in different halves of every range (TPE samples at random for its first 10 trials)
SAMPLER = "qmc"
#: the share of the training classes tuning scores on (carved with the tuning seed)
VAL_FRACTION = 0.2
TUNE_SEED = 0


def _slug(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    while "__" in out:
        out = out.replace("__", "_")
    return out


def _env(threads: int) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def tune_args(cell: Cell, out: Path, trials: int, extra: Sequence[str], val_fraction: float = VAL_FRACTION) -> list[str]:
    return ["tune.py", "--config", cell.config, "--space", str(out / "space.yaml"), "--trials", str(trials),
            "--out", str(out / "tune"), "--sampler", SAMPLER, "--no-progress", *cell.overrides, *extra,
            f"data.val_fraction={val_fraction}", f"train.seed={TUNE_SEED}"]


def seed_args(out: Path, seed: int, run_dir: Optional[Path] = None, overrides: Sequence[str] = ()) -> list[str]:
    """``train.py`` on the best config of the cell in ``out`` with ``seed``, into ``run_dir`` (``out/seed<seed>``)."""
    run_dir = run_dir if run_dir is not None else out / f"seed{seed}"
    return ["train.py", "--config", str(out / "tune" / "best.yaml"), "data.val_fraction=0", f"train.seed={seed}",
            f"train.out_dir={run_dir}", "train.progress=false", *overrides]


def _call(args: list[str], threads: int, log: Path) -> None:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(threads), cwd=ROOT)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ python {' '.join(args)}\n# {time.perf_counter() - started:.0f} s, exit {proc.returncode}\n"
                   f"{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"failed: python {' '.join(args)}\n{proc.stderr[-3000:]}")


def _tune(cell: Cell, out: Path, trials: int, extra: tuple[str, ...], threads: int, val_fraction: float) -> Cell:
    out.mkdir(parents=True, exist_ok=True)
    (out / "space.yaml").write_text(yaml.safe_dump(cell.space, sort_keys=False))
    _call(tune_args(cell, out, trials, extra, val_fraction), threads, out / "tune.log")
    return cell


def _train(cell: Cell, out: Path, seed: int, threads: int) -> dict:
    if not (out / f"seed{seed}" / "metrics.json").exists():
        _call(seed_args(out, seed), threads, out / f"seed{seed}.log")
    return _row(cell, out, seed)


def _row(cell: Cell, out: Path, seed: int, run_dir: Optional[Path] = None) -> dict:
    run_dir = run_dir if run_dir is not None else out / f"seed{seed}"
    result = json.loads((run_dir / "metrics.json").read_text())
    return {"loss": cell.loss, "graph": cell.graph, "seed": seed, "out_dir": str(run_dir),
            "train_time_s": result["train_time_s"], **result["test"]}


def cell_record(cell: Cell, extra: Sequence[str], val_fraction: float = VAL_FRACTION) -> dict[str, Any]:
    """What a cell's runs are made of: its config, overrides, search space, the budget and the validation share."""
    return {"config": cell.config, "overrides": list(cell.overrides), "space": cell.space, "extra": list(extra),
            "val_fraction": val_fraction, "sampler": SAMPLER}


def check_record(cell: Cell, out: Path, extra: Sequence[str], val_fraction: float = VAL_FRACTION) -> None:
    """Write ``out/cell.json`` for a new cell; for one already there, raise if it was made with other overrides or
    another budget (its study and runs would be reused and reported as if made with these)."""
    want = cell_record(cell, extra, val_fraction)
    path = out / "cell.json"
    if not path.exists():
        if (out / "tune").exists():
            raise RuntimeError(f"{out} holds a study but no cell.json, so what it was made with is unknown; "
                               f"delete the folder or pass another --out")
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(want, indent=1) + "\n")
        return
    have = json.loads(path.read_text())
    differ = [k for k in want if have.get(k) != want[k]]
    if differ:
        raise RuntimeError(f"{out} was made with other {', '.join(differ)}: " +
                           "; ".join(f"{k} {have.get(k)!r}, now {want[k]!r}" for k in differ) +
                           "; delete the folder or pass another --out")


def _cell(cell: Cell, out: Path, seeds: Sequence[int], trials: int, extra: tuple[str, ...], threads: int,
          val_fraction: float) -> list[dict]:
    check_record(cell, out, extra, val_fraction)
    _tune(cell, out, trials, extra, threads, val_fraction)
    return [_train(cell, out, s, threads) for s in seeds]


def run_all(cells: Sequence[Cell], seeds: Sequence[int], out_root: str | Path, *, trials: int, jobs: int = 1,
            extra: Sequence[str] = (), val_fraction: float = VAL_FRACTION) -> pd.DataFrame:
    """Tune every cell, then train its best config with every seed; one row of test metrics per run. Each
    worker finishes a cell (its study, then its seeds) before it takes the next, so a run cut short leaves
    whole cells."""
    out_root, extra = Path(out_root).resolve(), tuple(extra)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    rows = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [(c, pool.submit(_cell, c, out_root / c.slug, seeds, trials, extra, threads, val_fraction))
                   for c in cells]
        for i, (cell, fut) in enumerate(futures, 1):
            cell_rows = fut.result()
            best = tuning(cell, out_root)
            print(f"[{i}/{len(cells)}] {cell.loss:34s} {cell.graph:18s} validation MAP@R {100 * best['val_map_r']:.2f} "
                  f"{best['params']} ({best['time_s']:.0f} s)", flush=True)
            for row in cell_rows:
                print(f"    seed {row['seed']}: R@1 {100 * row['recall@1']:.2f}  "
                      f"MAP@R {100 * row['mean_average_precision_at_r']:.2f}  ({row['train_time_s']:.0f} s)", flush=True)
            rows += cell_rows
    return pd.DataFrame(rows)


def collect(cells: Sequence[Cell], seeds: Sequence[int], out_root: str | Path, extra: Sequence[str] = (),
            val_fraction: float = VAL_FRACTION) -> pd.DataFrame:
    """The rows of the runs already finished under ``out_root``, each cell checked against its ``cell.json``."""
    out_root = Path(out_root)
    for c in cells:
        if (out_root / c.slug / "tune").exists():
            check_record(c, out_root / c.slug, extra, val_fraction)
    return pd.DataFrame([_row(c, out_root / c.slug, s) for c in cells for s in seeds
                         if (out_root / c.slug / f"seed{s}" / "metrics.json").exists()])


def _best_trial(cell: Cell, out_root: str | Path) -> tuple[pd.Series, pd.DataFrame]:
    """The best complete trial of the cell's study (all its values, unrounded) and the study's table."""
    table = pd.read_csv(Path(out_root) / cell.slug / "tune" / "trials.csv")
    done = table[table.state == "COMPLETE"]
    return done.loc[done.mean_average_precision_at_r.idxmax()], table


def tuning(cell: Cell, out_root: str | Path) -> dict[str, Any]:
    """The cell's study: trials run, best validation MAP@R and its parameters, and the tuning time."""
    best, table = _best_trial(cell, out_root)
    return {"trials": int((table.state == "COMPLETE").sum()), "val_map_r": float(best.mean_average_precision_at_r),
            "params": {k: (round(float(best[k]), 4) if isinstance(best[k], float) else best[k]) for k in cell.space},
            "time_s": float(table.time_s.sum())}


def control_overrides(cell: Cell, off: Cell, out_root: str | Path) -> list[str]:
    """The graph ``cell``'s best values of the keys its space shares with its loss's graph-off cell ``off``: the
    graph-off config retrained with them is the graph's control at equal hyper-parameters. Empty when they are
    the off cell's own best values (the off cell is then its own control)."""
    mine, theirs = _best_trial(cell, out_root)[0], _best_trial(off, out_root)[0]
    shared = [k for k in off.space if k in cell.space]
    if all(mine[k] == theirs[k] for k in shared):
        return []
    return [f"{k}={_override_value(mine[k])}" for k in shared]


def _override_value(value: Any) -> str:
    """A value read from a study's table as a config override (floats at full precision)."""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def _control(cell: Cell, off: Cell, out_root: Path, seed: int, threads: int, train: bool = True) -> Optional[dict]:
    """One seed of the graph-off config at the graph cell's values: the off cell's own run when those are its
    values, else ``<cell>/control/seed<seed>``, trained when missing and ``train``; ``None`` when it is missing."""
    overrides = control_overrides(cell, off, out_root)
    out = out_root / cell.slug
    run_dir = out / "control" / f"seed{seed}" if overrides else out_root / off.slug / f"seed{seed}"
    if overrides:
        record, want = out / "control.json", {"config": f"{off.slug}/tune/best.yaml", "overrides": overrides}
        if record.exists() and json.loads(record.read_text()) != want:
            raise RuntimeError(f"{out / 'control'} was trained with {json.loads(record.read_text())}, not {want}; "
                               f"delete it to retrain")
        if train and not (run_dir / "metrics.json").exists():
            record.write_text(json.dumps(want, indent=1) + "\n")
            _call(seed_args(out_root / off.slug, seed, run_dir, overrides), threads, out / f"control{seed}.log")
    return _row(cell, out, seed, run_dir) if (run_dir / "metrics.json").exists() else None


def _short(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def _pairs(cells: Sequence[Cell]) -> list[tuple[Cell, Cell]]:
    """(graph cell, its loss's graph-off cell) for every graph cell whose loss has an off cell among ``cells``."""
    off = {c.loss: c for c in cells if c.graph == "off"}
    return [(c, off[c.loss]) for c in cells if c.graph != "off" and c.loss in off]


def run_controls(cells: Sequence[Cell], seeds: Sequence[int], out_root: str | Path, *, jobs: int = 1) -> pd.DataFrame:
    """Every graph cell's control (:func:`control_overrides`), one row per seed; ``graph`` names the graph cell."""
    out_root = Path(out_root).resolve()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_control, c, off, out_root, s, threads) for c, off in _pairs(cells) for s in seeds]
        return pd.DataFrame([row for f in futures if (row := f.result()) is not None])


def collect_controls(cells: Sequence[Cell], seeds: Sequence[int], out_root: str | Path) -> pd.DataFrame:
    """The control rows already finished under ``out_root``."""
    out_root = Path(out_root)
    rows = [_control(c, off, out_root, s, threads=1, train=False) for c, off in _pairs(cells)
            if all((out_root / x.slug / "tune" / "trials.csv").exists() for x in (c, off)) for s in seeds]
    return pd.DataFrame([row for row in rows if row is not None])


def control_table(frame: pd.DataFrame, controls: pd.DataFrame, cells: Sequence[Cell], out_root: str | Path
                  ) -> pd.DataFrame:
    """Per graph cell: the graph-off config at the graph cell's values against the graph cell, mean ± std over
    seeds and the paired difference (graph − control) with its p-value."""
    rows = []
    for c, off in _pairs(cells):
        ctl = controls[controls.graph == c.graph] if len(controls) else controls
        ctl = ctl[ctl.loss == c.loss] if len(ctl) else ctl
        on = frame[(frame.loss == c.loss) & (frame.graph == c.graph)]
        if not len(ctl) or not len(on):
            continue
        pair = pd.concat([ctl.assign(graph="off"), on])
        values = control_overrides(c, off, out_root)
        row = {"base loss": c.loss, "graph": c.graph,
               "values": ", ".join(f"{k}={_short(v)}" for k, v in (o.split("=", 1) for o in values)) or
                         "the off cell's own"}
        for key, head in (("recall@1", "R@1"), ("mean_average_precision_at_r", "MAP@R")):
            for name, g in (("off", ctl), ("graph", on)):
                v = 100 * g[key].to_numpy(dtype=float)
                row[f"{name} {head}"] = f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"
        for key, head in (("recall@1", "ΔR@1 (p)"), ("mean_average_precision_at_r", "ΔMAP@R (p)")):
            d, p, _ = paired(pair, key)[(c.loss, c.graph)]
            row[head] = f"{d:+.2f} ({p:.3f})"
        rows.append(row)
    return pd.DataFrame(rows)


def paired(frame: pd.DataFrame, key: str) -> dict[tuple[str, str], tuple[float, float, int]]:
    """Per (loss, graph ≠ off): mean over seeds of (graph − off) in ``key`` (points of %), the two-sided
    p-value of the paired t-test over the seeds both cells have, and that number of seeds."""
    from scipy.stats import ttest_rel

    out = {}
    for loss, g in frame.groupby("loss", sort=False):
        off = g[g.graph == "off"].set_index("seed")[key]
        for graph, h in g[g.graph != "off"].groupby("graph", sort=False):
            on = h.set_index("seed")[key]
            seeds = sorted(set(on.index) & set(off.index))
            diff = 100 * (on[seeds].to_numpy(dtype=float) - off[seeds].to_numpy(dtype=float))
            p = float(ttest_rel(on[seeds], off[seeds]).pvalue) if len(seeds) > 1 and diff.std() > 0 else float("nan")
            out[(loss, graph)] = (float(diff.mean()) if len(seeds) else float("nan"), p, len(seeds))
    return out


def _cell_order(frame: pd.DataFrame) -> list[tuple[str, str]]:
    order = [(c.loss, c.graph) for c in CELLS]
    present = list(dict.fromkeys(zip(frame.loss, frame.graph)))
    return [k for k in order if k in present] + [k for k in present if k not in order]


def summary(frame: pd.DataFrame, tuned: Optional[dict[tuple[str, str], dict]] = None) -> pd.DataFrame:
    """Mean ± std over seeds per cell, metrics in %, the paired difference against the same loss with the
    graph off (and its p-value), the best validation MAP@R of the cell's study, the train time."""
    diffs = {k: paired(frame, k) for k in ("recall@1", "mean_average_precision_at_r")} if "graph" in frame else {}
    rows = []
    for loss, graph in _cell_order(frame):
        g = frame[(frame.loss == loss) & (frame.graph == graph)]
        row = {"base loss": loss, "graph": graph, "seeds": len(g)}
        for key, head in zip(METRICS, HEADERS):
            if key not in g:
                continue
            values = 100 * g[key].to_numpy(dtype=float)
            row[head] = f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"
        for key, head in (("recall@1", "ΔR@1 (p)"), ("mean_average_precision_at_r", "ΔMAP@R (p)")):
            d = diffs.get(key, {}).get((loss, graph))
            row[head] = "—" if d is None else f"{d[0]:+.2f} ({d[1]:.3f})"
        if tuned is not None:
            t = tuned.get((loss, graph))
            row["val MAP@R"] = "—" if t is None else f"{100 * t['val_map_r']:.2f}"
        row["train time (s)"] = f"{g['train_time_s'].mean():.0f}"
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def graph_plot(frame: pd.DataFrame, path: str | Path) -> Path:
    """R@1 and MAP@R per base loss, one bar per graph (mean ± std over seeds, each seed a dot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    losses = list(dict.fromkeys(loss for loss, _ in _cell_order(frame)))
    graphs = [g.name for g in GRAPHS]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.4 * len(losses)), 4.8))
    width = 0.8 / len(graphs)
    for ax, (key, head) in zip(axes, (("recall@1", "R@1 (%)"), ("mean_average_precision_at_r", "MAP@R (%)"))):
        for j, graph in enumerate(graphs):
            for i, loss in enumerate(losses):
                values = 100 * frame[(frame.loss == loss) & (frame.graph == graph)][key].to_numpy(dtype=float)
                if not len(values):
                    continue
                x = i + (j - (len(graphs) - 1) / 2) * width
                ax.bar(x, values.mean(), width, yerr=values.std(ddof=1) if len(values) > 1 else 0, capsize=3,
                       color=f"C{j}", label=graph if i == 0 or graph not in ax.get_legend_handles_labels()[1] else None)
                ax.plot(np.full(len(values), x), values, "k.", markersize=4)
        ax.set_xticks(range(len(losses)), [textwrap.fill(loss, 15, break_long_words=False) for loss in losses], fontsize=8)
        ax.set_ylabel(head)
        low = 100 * frame[key].min()
        ax.set_ylim(max(0.0, low - 5), min(100.0, 100 * frame[key].max() + 2))
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="upper center", ncol=len(uniq), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(frame: pd.DataFrame, path: str | Path, *, cells: Sequence[Cell], seeds: Sequence[int], trials: int,
                 extra: Sequence[str] = (), out_root: str | Path = "runs/results",
                 wall_s: Optional[float] = None, notes: str = "", controls: Optional[pd.DataFrame] = None,
                 setting: Optional[str] = None) -> Path:
    """``docs/results.md``: the grid's table, the plot beside it, the tuned values and the exact commands."""
    path = Path(path)
    tuned = {}
    for c in cells:
        if (Path(out_root) / c.slug / "tune" / "trials.csv").exists():
            tuned[(c.loss, c.graph)] = tuning(c, out_root)
    table = summary(frame, tuned)
    commits = run_commits(frame, controls)
    plot = graph_plot(frame, path.parent / "img" / f"graph_{path.stem}.png")
    budget = " ".join(extra)
    wall = f"{wall_s / 60:.0f} minutes" if wall_s is not None else "not measured"
    dataset = Path(cells[0].config).stem if cells else "glyphs"
    parts = [f"# Does the batch graph help? Results on {setting or dataset}", "",
             f"Runs made at commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits) or 'unknown'} (each run's env.json). "
             f"Regenerate with `make results` (wall-clock time of tuning and training, "
             f"summed over the invocations that ran them: {wall}, on 2 shared CPU cores).", "",
             f"Each cell: `pygml-tune` with {trials} trials on a validation split of {VAL_FRACTION:.0%} of the training "
             f"classes (seed {TUNE_SEED}; trial 0 is the cell's starting values, the others drawn by `--sampler {SAMPLER}`), then the best config trained on all "
             f"training classes with seeds {', '.join(map(str, seeds))} and evaluated once, after the last epoch, on the "
             f"test classes. Budget of every run: `{budget}`. Mean ± std over seeds, metrics in %.", "",
             "ΔR@1 and ΔMAP@R: mean over seeds of (this cell − the same loss with the graph off, same seed), in points, "
             "with the two-sided p-value of a paired t-test over the seeds (2 degrees of freedom with 3 seeds: see "
             "below for how little that can show). val MAP@R: the best trial's validation score.", "",
             markdown_table(table), "", f"![R@1 and MAP@R per base loss and graph](img/{plot.name})", "",
             "Tuned values (best trial of each cell):", "",
             markdown_table(pd.DataFrame([{"base loss": l, "graph": g, "trials": t["trials"],
                                           "tuning time (s)": f"{t['time_s']:.0f}",
                                           "best values": ", ".join(f"{k}={v}" for k, v in t["params"].items())}
                                          for (l, g), t in tuned.items()])), ""]
    control = control_table(frame, controls, cells, out_root) if controls is not None and len(controls) else None
    if control is not None and len(control):
        parts += ["## The graph at equal hyper-parameters", "",
                  "A cell's tuning can pick other values (lr, the loss's parameter) with the graph than without it, "
                  "so a difference in the table above mixes the graph's effect with theirs. Here each graph cell is "
                  "set against its loss's graph-off config retrained with the graph cell's own best values of the "
                  "keys both search (off); Δ is graph − off, paired over seeds.", "",
                  markdown_table(control), ""]
    if notes:
        parts += [notes.strip(), ""]
    parts += ["## Commands", "", "Each cell is (`OUT` = the cell's folder, `S` = a seed):", ""]
    ran = set(zip(frame.loss, frame.graph))
    for c in (c for c in cells if (c.loss, c.graph) in ran):
        out = Path("OUT")
        parts.append(f"- {c.loss}, graph {c.graph}: space `{json.dumps(c.space)}` in `OUT/space.yaml`, then "
                     f"`python {' '.join(tune_args(c, out, trials, extra))}` and "
                     f"`python {' '.join(seed_args(out, 0)).replace('seed0', 'seedS').replace('seed=0', 'seed=S')}`")
    if control is not None and len(control):
        parts += ["", "The control of a graph cell (`OFF` = its loss's graph-off folder, the values as in its row "
                      "above, at full precision in `OUT/control.json`): "
                      f"`python {' '.join(seed_args(Path('OFF'), 0, Path('OUT/control/seedS')))} "
                      "key=value ...`".replace("seed=0", "seed=S")]
    parts.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def run_commits(*frames: Optional[pd.DataFrame]) -> list[str]:
    """The commits (short) the runs of ``frames`` were made at, read from each run's ``env.json``."""
    commits = set()
    for frame in frames:
        for out_dir in (frame.out_dir if frame is not None and len(frame) else ()):
            env = Path(out_dir) / "env.json"
            if env.exists() and (commit := json.loads(env.read_text()).get("commit")):
                commits.add(commit[:7])
    return sorted(commits)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/results.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="glyphs",
                        help="each cell starts from configs/<method>/<dataset>.yaml (default glyphs; the benchmarks: "
                             "cub, cars, sop, inshop with data.root and model.pretrained among the overrides)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=3, help="tuning trials per cell (the same for every cell)")
    parser.add_argument("--losses", nargs="+", help="base losses to run, in this order (default: all)")
    parser.add_argument("--graphs", nargs="+", help="graphs to run (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each gets cores/jobs threads)")
    parser.add_argument("--out", help="where the studies and runs are written (default runs/results/<dataset>)")
    parser.add_argument("--report", default="docs/results.md")
    parser.add_argument("--notes", help="a markdown file of findings to include in the report")
    parser.add_argument("--setting", help="what the report's title calls the setting (default: the dataset's name)")
    parser.add_argument("--collect", action="store_true", help="no training: report the runs finished under --out")
    parser.add_argument("extra", nargs="*", metavar="key.sub=value",
                        help=f"overrides of every run; on glyphs they follow (and may change) the budget "
                             f"{' '.join(GLYPHS_BUDGET)}, on the other datasets the configs' own budget holds")
    args = parser.parse_args(argv)
    args.extra = [*(GLYPHS_BUDGET if args.dataset == "glyphs" else ()), *args.extra]
    args.out = args.out or f"runs/results/{args.dataset}"
    for flag, given, known in (("--losses", args.losses, {c.loss for c in CELLS}),
                               ("--graphs", args.graphs, {c.graph for c in CELLS})):
        unknown = [name for name in given or () if name not in known]
        if unknown:
            hint = (" (overrides go before the options: python scripts/results.py key=value ... --losses ...)"
                    if any("=" in name for name in unknown) else "")
            parser.error(f"{flag}: no such {flag[2:-2] if flag == '--losses' else 'graph'} {unknown[0]!r}{hint}; "
                         f"known: {', '.join(repr(k) for k in sorted(known))}")
    order = {loss: i for i, loss in enumerate(args.losses or [])}
    cells = sorted((dataclasses.replace(c, config=str(Path(c.config).with_name(f"{args.dataset}.yaml"))) for c in CELLS
                    if (not args.losses or c.loss in args.losses) and (not args.graphs or c.graph in args.graphs)),
                   key=lambda c: order.get(c.loss, 0))
    if not cells:
        parser.error(f"no cell matches; losses: {sorted({c.loss for c in CELLS})}, graphs: {[g.name for g in GRAPHS]}")
    started = time.perf_counter()
    if args.collect:
        frame = collect(cells, args.seeds, args.out, args.extra)
        if frame.empty:
            parser.error(f"no finished run under {args.out}")
        controls = collect_controls(cells, args.seeds, args.out)
        timing = Path(args.out) / "wall.json"
        wall = json.loads(timing.read_text())["wall_s"] if timing.exists() else None
    else:
        frame = run_all(cells, args.seeds, args.out, trials=args.trials, jobs=args.jobs, extra=args.extra)
        frame.to_csv(Path(args.out) / "all_runs.csv", index=False)
        controls = run_controls(cells, args.seeds, args.out, jobs=args.jobs)
        controls.to_csv(Path(args.out) / "all_controls.csv", index=False)
        timing = Path(args.out) / "wall.json"  # summed over the invocations that trained under --out
        wall = time.perf_counter() - started + (json.loads(timing.read_text())["wall_s"] if timing.exists() else 0.0)
        timing.write_text(json.dumps({"wall_s": wall}))
    notes = Path(args.notes).read_text() if args.notes and Path(args.notes).exists() else ""
    report = write_report(frame, args.report, cells=cells, seeds=args.seeds, trials=args.trials, extra=args.extra,
                          out_root=args.out, wall_s=wall, notes=notes, controls=controls,
                          setting=args.setting)
    print(markdown_table(summary(frame)))
    if wall is not None:
        print(f"wall-clock: {wall / 60:.1f} minutes")
    print(f"written: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
