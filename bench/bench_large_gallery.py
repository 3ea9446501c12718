"""Approximate against exact retrieval evaluation on a gallery of 1,000,000 × 128 (synthetic).

The gallery holds 100,000 classes of 10 rows; 10,000 queries are further rows of 10,000 of those
classes (query vs gallery, as In-Shop). Two synthetic sets, each with its noise set so that exact
Recall@1 is near a trained model's (about 0.8):

* ``intrinsic-16``: class centres and noise live in 16 dimensions, mapped into 128 by a fixed random
  linear map, plus a little isotropic noise. Learned embeddings concentrate near such low-dimensional
  sets, which is what partition indexes exploit;
* ``isotropic``: centres and noise fill all 128 dimensions, the worst case for any partition index
  (a query's class mates fall in other cells almost as often as strangers do).

Contenders, all through :func:`pygml.evaluation.evaluate` (Recall@1/10, MAP@R and R-precision, no NMI,
CPU): the exact ranking (``search="exact"``), the reference; ``IVF1024,Flat`` (about sqrt(M) inverted
lists of full vectors) at several ``nprobe``; ``IVF1024,PQ32`` (the same lists holding 32-byte codes:
the index of a gallery beyond memory, 16 × smaller than its rows). An approximate time is the index
build (training on a seeded sample, adding the rows) plus the search; the build is also shown alone.
The recall loss is exact minus approximate, in points.

Quick run: a 20,000-row gallery, 1,000 queries, 64 lists (the last ``nprobe`` visits them all: exact),
8-byte codes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import row  # noqa: E402

DIM = 128
FULL = dict(classes=100_000, per_class=10, queries=10_000, lists=1024, codes="PQ32", nprobes=(8, 32, 128))
QUICK = dict(classes=2_000, per_class=10, queries=1_000, lists=64, codes="PQ8", nprobes=(8, 32, 64))
#: the setting with targets (on the intrinsic-16 set): time ratio against exact, and Recall@1/@10 loss
TARGET_NPROBE, TARGET_RATIO, TARGET_LOSS = 32, 0.5, 1.0
#: per set: latent dimension, noise around the class centre (calibrated for exact Recall@1 ≈ 0.8 at
#: full size), isotropic noise added after the map into DIM dimensions
SETS = {"intrinsic-16": (16, 0.35, 0.05), "isotropic": (DIM, 1.3, 0.0)}


def synthetic(classes: int, per_class: int, queries: int, kind: str = "intrinsic-16", seed: int = 0):
    """(gallery, gallery_labels, query, query_labels): ``classes × per_class`` gallery rows and
    ``queries`` query rows of distinct classes, float32, ``DIM`` columns (see the module docstring)."""
    latent, noise, iso = SETS[kind]
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, latent), dtype=np.float32)
    g_labels = np.repeat(np.arange(classes), per_class)
    q_labels = rng.choice(classes, size=queries, replace=False)

    def rows(labels: np.ndarray) -> np.ndarray:
        x = centres[labels]
        x += noise * rng.standard_normal(x.shape, dtype=np.float32)
        return x

    gallery, query = rows(g_labels), rows(q_labels)
    if latent != DIM:
        lift = rng.standard_normal((latent, DIM), dtype=np.float32) / np.float32(np.sqrt(latent))
        gallery, query = gallery @ lift, query @ lift
    if iso:
        gallery += iso * rng.standard_normal(gallery.shape, dtype=np.float32)
        query += iso * rng.standard_normal(query.shape, dtype=np.float32)
    return gallery, g_labels, query, q_labels


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _loss_rows(name: str, exact: dict, approx: dict, target: bool) -> list[dict]:
    rows = []
    for k in (1, 10):
        loss = 100.0 * (exact[f"recall@{k}"] - approx[f"recall@{k}"])
        r = row(f"{name}: Recall@{k} loss (points)", loss, None, None, unit="pt",
                reference_name=f"exact Recall@{k} = {100 * exact[f'recall@{k}']:.2f}")
        if target:
            r.update(target=TARGET_LOSS, met=loss <= TARGET_LOSS)
        rows.append(r)
    return rows


def _one_set(kind: str, size: dict, targets: bool) -> list[dict]:
    import faiss

    from pygml.evaluation import build_index, evaluate

    gallery, g_labels, query, q_labels = synthetic(size["classes"], size["per_class"], size["queries"], kind)
    shape = f"{gallery.shape[0]:,}x{DIM} {kind}"
    kw = dict(recall_at=(1, 10), nmi=False, device="cpu")
    exact, t_exact = _timed(lambda: evaluate(query, q_labels, gallery, g_labels, **kw))
    print(f"{kind} exact: {t_exact:.1f} s, R@1 {exact['recall@1']:.4f}, R@10 {exact['recall@10']:.4f}",
          file=sys.stderr, flush=True)
    ref = f"exact evaluate, {query.shape[0]:,} queries"
    rows = []
    for codes in ("Flat", size["codes"]):
        spec = f"IVF{size['lists']},{codes}"
        index, t_build = _timed(lambda: build_index(gallery, spec))
        index_bytes = faiss.serialize_index(index).nbytes
        rows.append(row(f"{spec} {shape}: build alone", t_build, t_exact, None, reference_name=ref))
        if codes != "Flat":
            rows.append(row(f"{spec} {shape}: index size", float(index_bytes), float(gallery.nbytes), None,
                            unit="B", reference_name="the gallery rows (float32)"))
        for nprobe in (size["nprobes"] if codes == "Flat" else (TARGET_NPROBE,)):
            faiss.extract_index_ivf(index).nprobe = nprobe
            approx, t_search = _timed(lambda: evaluate(query, q_labels, gallery, g_labels, search=index, **kw))
            print(f"{kind} {spec} nprobe={nprobe}: build {t_build:.1f} s + search {t_search:.1f} s, "
                  f"R@1 {approx['recall@1']:.4f}, R@10 {approx['recall@10']:.4f}, index {index_bytes / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)
            target = targets and kind == "intrinsic-16" and codes == "Flat" and nprobe == TARGET_NPROBE
            name = f"{spec} nprobe={nprobe} {shape}"
            rows.append(row(f"{name}: build + search", t_build + t_search, t_exact,
                            TARGET_RATIO if target else None, reference_name=ref))
            rows += _loss_rows(name, exact, approx, target)
        del index
    return rows


def run(quick: bool = False) -> list[dict]:
    from pygml.evaluation import evaluate

    size = QUICK if quick else FULL
    warm = synthetic(500, 4, 10)
    evaluate(warm[0], warm[1], recall_at=(1,), nmi=False, device="cpu")  # library start-up, untimed
    rows = []
    for kind in SETS:
        rows += _one_set(kind, size, targets=not quick)  # the targets are for the full size
    return rows


if __name__ == "__main__":
    from bench.common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
