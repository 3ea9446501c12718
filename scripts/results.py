"""The results table: every method and its graph-off ablation, several seeds, on the offline datasets.

    python scripts/results.py                      # glyphs + Fashion-MNIST, 3 seeds: writes docs/results.md
    python scripts/results.py --datasets glyphs --seeds 0 --jobs 2

Each run is ``train.py`` with a shipped config plus overrides, so every number in the table can be
reproduced with the command printed beside it. Reported: the **last** epoch on the test classes,
mean ± std over seeds; nothing is selected on the test set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing pygml
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Run:
    name: str
    config: str
    overrides: tuple[str, ...] = ()
    #: the graph method this run is the ablation of (None for a method itself)
    ablation_of: Optional[str] = None


RUNS: tuple[Run, ...] = (
    Run("baseline (normalized softmax)", "configs/baseline/glyphs.yaml"),
    Run("Intra-Batch", "configs/intra_batch/glyphs.yaml"),
    Run("Intra-Batch, MPN off", "configs/intra_batch/glyphs.yaml", ("intra_batch.mpn=false",), "Intra-Batch"),
    Run("ProxyGML", "configs/proxygml/glyphs.yaml"),
    Run("ProxyGML, none (no S_pos, no mask, no L_p)", "configs/proxygml/glyphs.yaml",
        ("proxygml.use_spos=false", "proxygml.use_mask=false", "proxygml.use_reg=false"), "ProxyGML"),
    Run("proxy softmax (no subgraph)", "configs/proxygml/glyphs.yaml", ("proxygml.subgraph=false",), "ProxyGML"),
    Run("BGFormer", "configs/bgformer/glyphs.yaml"),
    Run("BGFormer, α = 1 (blocks off)", "configs/bgformer/glyphs.yaml", ("bgformer.alpha=1.0",), "BGFormer"),
)

#: overrides that move a glyphs config onto another offline dataset
DATASETS: dict[str, tuple[str, ...]] = {
    "glyphs": (),
    # 5 training classes: P×K = 5×12 keeps the batch size (60) near glyphs' 64
    "fashion_mnist": ("data.name=fashion_mnist", "data.image_size=28", "train.classes_per_batch=5",
                      "train.samples_per_class=12"),
}

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "mean_average_precision_at_r", "r_precision", "NMI")
HEADERS = ("R@1", "R@2", "R@4", "R@8", "MAP@R", "RP", "NMI")


@dataclass
class Job:
    run: Run
    dataset: str
    seed: int
    out_dir: str
    extra: tuple[str, ...] = ()

    @property
    def overrides(self) -> list[str]:
        return [*self.run.overrides, *DATASETS[self.dataset], *self.extra, f"train.seed={self.seed}",
                f"train.out_dir={self.out_dir}", "train.progress=false"]

    @property
    def command(self) -> str:
        return f"python train.py --config {self.run.config} " + " ".join(self.overrides[:-1])


def _execute(job: Job, threads: int) -> dict:
    """Train one run in a fresh process (so runs never share RNG or thread state); return its metrics."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / job.run.config),
                           *job.overrides],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed: {job.command}\n{proc.stderr[-3000:]}")
    return _row(job)


def _row(job: Job) -> dict:
    result = json.loads((Path(job.out_dir) / "metrics.json").read_text())
    return {"run": job.run.name, "dataset": job.dataset, "seed": job.seed, "out_dir": job.out_dir,
            "train_time_s": result["train_time_s"], **result["test"]}


def _jobs(runs: Sequence[Run], datasets: Sequence[str], seeds: Sequence[int], out_root: str | Path,
          extra: Sequence[str] = ()) -> list[Job]:
    return [Job(r, d, s, str(Path(out_root) / d / _slug(r.name) / f"seed{s}"), tuple(extra))
            for d in datasets for r in runs for s in seeds]


def collect(runs: Sequence[Run], datasets: Sequence[str], seeds: Sequence[int], out_root: str | Path) -> pd.DataFrame:
    """The rows of the runs already finished under ``out_root`` (those with a ``metrics.json``)."""
    done = [j for j in _jobs(runs, datasets, seeds, out_root) if (Path(j.out_dir) / "metrics.json").exists()]
    return pd.DataFrame([_row(j) for j in done])


def run_all(runs: Sequence[Run], datasets: Sequence[str], seeds: Sequence[int], out_root: str | Path, *,
            jobs: int = 1, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Train every (run, dataset, seed); one row of test metrics per run."""
    todo = _jobs(runs, datasets, seeds, out_root, extra)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    rows = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_execute, j, threads) for j in todo]
        for i, fut in enumerate(futures, 1):
            row = fut.result()
            print(f"[{i}/{len(todo)}] {row['dataset']:14s} {row['run']:45s} seed {row['seed']}: "
                  f"R@1 {100 * row['recall@1']:.2f}  MAP@R {100 * row['mean_average_precision_at_r']:.2f}  "
                  f"({row['train_time_s']:.0f} s)", flush=True)
            rows.append(row)
    return pd.DataFrame(rows)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_").replace("__", "_")


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (dataset, run), metrics in %."""
    rows = []
    for (dataset, run), g in frame.groupby(["dataset", "run"], sort=False):
        row = {"dataset": dataset, "run": run, "seeds": len(g)}
        for key, head in zip(METRICS, HEADERS):
            values = 100 * g[key].to_numpy(dtype=float)
            row[head] = f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"
        row["train time (s)"] = f"{g['train_time_s'].mean():.0f}"
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_report(frame: pd.DataFrame, path: str | Path, *, runs: Sequence[Run], extra: Sequence[str] = (),
                 commit: Optional[str] = None, notes: str = "") -> Path:
    """``docs/results.md``: the table per dataset, the exact commands, the commit, plots beside it."""
    from pygml.app.plots import recall_curves, training_curves

    path = Path(path)
    img = path.parent / "img"
    table = summary(frame)
    parts = ["# Results on the offline datasets", "",
             "Mean ± std over seeds of the **last epoch** on the test classes (zero-shot: no test class is seen in "
             "training; nothing is selected on the test set). Metrics in %, as defined in `pygml.evaluation`.",
             f"Commit `{commit or 'unknown'}`. Regenerate with `make results`.", ""]
    for dataset, t in table.groupby("dataset", sort=False):
        parts += [f"## {dataset}", "", markdown_table(t.drop(columns=["dataset"])), ""]
        sub = frame[frame.dataset == dataset]
        first_seed = sub.seed.min()
        means = {run: {k: float(g[k].mean()) for k in METRICS if k.startswith("recall@")}
                 for run, g in sub.groupby("run", sort=False)}
        curve = recall_curves(means, img / f"recall_{dataset}.png", title=f"Recall@K on {dataset} (mean over seeds)")
        logs = {r: Path(o) / "log.csv" for r, o in sub[sub.seed == first_seed][["run", "out_dir"]].itertuples(index=False)}
        curves = training_curves(logs, img / f"training_{dataset}.png")
        parts += [f"![Recall@K on {dataset}](img/{curve.name})", "",
                  f"![training curves on {dataset}](img/{curves.name})", ""]
    if notes:
        parts += ["## Findings", "", notes.strip(), ""]
    parts += ["## Commands", "", "Each row is, for every seed `S` (`train.out_dir` omitted):", ""]
    for r in runs:
        extra_s = " ".join(extra)
        parts.append(f"- {r.name}: `python train.py --config {r.config} {' '.join(r.overrides)} {extra_s} "
                     f"train.seed=S`".replace("  ", " "))
    parts += ["", "On Fashion-MNIST the same commands add `" + " ".join(DATASETS["fashion_mnist"]) + "`.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def _commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/results.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", help="names of runs to do (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each gets cores/jobs threads)")
    parser.add_argument("--out", default="runs/results", help="where the runs are written")
    parser.add_argument("--report", default="docs/results.md")
    parser.add_argument("--notes", help="a markdown file of findings to include in the report")
    parser.add_argument("--collect", action="store_true",
                        help="no training: report the runs already finished under --out")
    parser.add_argument("extra", nargs="*", metavar="key.sub=value", help="overrides applied to every run")
    args = parser.parse_args(argv)
    runs = [r for r in RUNS if not args.runs or r.name in args.runs]
    if not runs:
        parser.error(f"no run matches {args.runs}; runs: {[r.name for r in RUNS]}")
    if args.collect:
        frame = collect(runs, args.datasets, args.seeds, args.out)
        if frame.empty:
            parser.error(f"no finished run under {args.out}")
        runs = [r for r in runs if r.name in set(frame.run)]
    else:
        frame = run_all(runs, args.datasets, args.seeds, args.out, jobs=args.jobs, extra=args.extra)
        frame.to_csv(Path(args.out) / "all_runs.csv", index=False)
    notes = Path(args.notes).read_text() if args.notes else ""
    report = write_report(frame, args.report, runs=runs, extra=args.extra, commit=_commit(), notes=notes)
    print(markdown_table(summary(frame)))
    print(f"written: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
