"""The retrieval evaluator at Stanford Online Products scale, against pytorch-metric-learning and faiss.

60,502 × 512 embeddings with SOP-like labels (11,316 classes of 2 to 12 images), leave-one-out,
Recall@1/10/100/1000 + MAP@R + R-precision (no NMI). The embeddings are class centres plus noise, set
so that Recall@1 is near a trained model's (about 0.8); the references' costs do not depend on it.
Ours is also timed on unstructured random rows, its worst case: almost no query finds a relevant
neighbour in its top list, so the half-product schedule of leave-one-out is not taken and every
first hit is counted.

Contenders, each given the same embeddings:

* ours: :func:`pygml.evaluation.evaluate` on the raw rows (normalisation included in its time);
* PML: ``AccuracyCalculator`` (device CPU, its default faiss ``IndexFlatL2`` on the L2-normalised
  rows) with ``k=1000``, the depth Recall@1000 needs, extended by the subclassing its documentation
  describes with ``recall_at_K`` metrics; the run prints how far it is from ours (float32 rounding:
  rows within ~1e-7 in similarity can swap between its L2 ranking and our inner products);
* faiss, the floor: a bare exhaustive ``IndexFlatIP`` search of the normalised rows, with k = 1001
  (the depth an evaluator reading Recall@1000 from a kNN list needs: 1000 + the query itself) and,
  as a stricter reference, with the depth our pass selects (+1 for the query itself).

``run(device="cuda")`` runs every contender on the GPU: ours with ``device="cuda"`` (torch top-k),
PML's calculator with ``device=cuda`` (its faiss search on the GPU when faiss has GPU support), faiss's
flat index moved to the GPU (``index_cpu_to_all_gpus``; the faiss rows are left empty, with the reason,
when the installed faiss has no GPU support). The contenders then run in this process, each once after
a small warm-up, and the memory rows give ``torch.cuda.max_memory_allocated`` of ours instead of RSS.

Memory: in the full run each contender runs alone in a fresh process that first loads the embeddings;
the figure is the growth of the process' peak resident set size (``resource.getrusage``,
``ru_maxrss``) across the call, i.e. the most memory the evaluation held on top of its inputs.
The quick run (3,000 rows) times one call of each in-process and leaves memory out.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import format_table, row  # noqa: E402

N_FULL, CLASSES_FULL, N_QUICK, DIM = 60_502, 11_316, 3_000, 512
RECALL_AT = (1, 10, 100, 1000)
#: noise scale of the rows around their class centre (calibrated for Recall@1 ≈ 0.8 at full size)
NOISE = 2.2
MEMORY_BUDGET = 3 * 2**30
#: largest difference from PML accepted by the run: PML ranks by float32 L2 distances and we by float32
#: inner products, so rows within ~1e-7 of each other can swap; at full size two queries of 60,502
#: do, moving R-precision by ~1.5e-6
AGREEMENT = 1e-4
CONTENDERS = ("ours", "ours_random", "pml", "faiss_floor", "faiss_depth")


def sop_like(n: int, n_classes: int, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 rows (n, dim) in ``n_classes`` classes of 2 to 12 rows, and their labels (n,)."""
    if not 2 * n_classes <= n <= 12 * n_classes:
        raise ValueError(f"{n} rows cannot fill {n_classes} classes of 2 to 12 rows")
    rng = np.random.default_rng(seed)
    extra = rng.multinomial(n - 2 * n_classes, rng.dirichlet(np.ones(n_classes)))
    overflow = int(np.maximum(extra - 10, 0).sum())
    extra = np.minimum(extra, 10)
    while overflow:
        room = np.flatnonzero(extra < 10)
        grow = rng.choice(room, size=min(room.size, overflow), replace=False)
        extra[grow] += 1
        overflow -= grow.size
    sizes = 2 + extra
    labels = rng.permutation(np.repeat(np.arange(n_classes), sizes))
    centres = rng.standard_normal((n_classes, dim), dtype=np.float32)
    x = centres[labels] + NOISE * rng.standard_normal((n, dim), dtype=np.float32)
    return x, labels


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _depth(labels: np.ndarray) -> int:
    from pygml.evaluation.ranking import MIN_DEPTH

    return max(int(np.bincount(labels).max()) - 1, min(max(RECALL_AT), MIN_DEPTH))


def _pml_calculator(device: str = "cpu"):
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    class WithRecall(AccuracyCalculator):
        """PML's calculator with Recall@K (hit rate over the queries that have a relevant row)."""

        def requires_knn(self):
            return super().requires_knn() + [f"recall_at_{k}" for k in RECALL_AT]

    def metric(k):
        def calculate(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
            hits = (knn_labels[not_lone_query_mask, :k] == query_labels[not_lone_query_mask, None]).any(dim=1)
            return hits.double().mean().item()
        return calculate

    for k in RECALL_AT:
        setattr(WithRecall, f"calculate_recall_at_{k}", metric(k))
    include = ("precision_at_1", "r_precision", "mean_average_precision_at_r") + tuple(
        f"recall_at_{k}" for k in RECALL_AT)
    return WithRecall(include=include, k=max(RECALL_AT), device=torch.device(device))


def faiss_gpu_missing() -> str | None:
    """Why faiss cannot search on a GPU here, or ``None`` when it can."""
    import faiss

    if not hasattr(faiss, "index_cpu_to_all_gpus"):
        return f"faiss {faiss.__version__} is a CPU-only build"
    if faiss.get_num_gpus() == 0:
        return f"faiss {faiss.__version__} sees no GPU"
    return None


def contender(name: str, x: np.ndarray, labels: np.ndarray, device: str = "cpu"):
    """A no-argument callable that runs contender ``name`` on (x, labels) on ``device``, returning its
    metrics or None."""
    import faiss

    if name in ("ours", "ours_random"):
        from pygml.evaluation import evaluate

        if name == "ours_random":
            x = np.random.default_rng(1).standard_normal(x.shape, dtype=np.float32)
        return lambda: evaluate(x, labels, recall_at=RECALL_AT, nmi=False, device=device)
    unit = np.ascontiguousarray(_unit(x))
    if name == "pml":
        calculator = _pml_calculator(device)
        return lambda: calculator.get_accuracy(unit, labels)
    k = max(RECALL_AT) + 1 if name == "faiss_floor" else _depth(labels) + 1
    if device != "cpu" and faiss_gpu_missing():
        raise RuntimeError(f"faiss on {device}: {faiss_gpu_missing()}; install a GPU build of faiss")

    def search():
        index = faiss.IndexFlatIP(unit.shape[1])
        if device != "cpu":
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(unit)
        index.search(unit, k)

    return search


def _warm_up(x: np.ndarray, labels: np.ndarray, device: str = "cpu") -> None:
    """One small evaluation, so that the first timed call does not pay for library start-up."""
    from pygml.evaluation import evaluate

    evaluate(x, labels, recall_at=(1,), nmi=False, device=device)


def _in_process(x: np.ndarray, labels: np.ndarray, device: str) -> dict:
    """Each contender timed once in this process after a small warm-up; on CUDA, with the peak of
    allocated CUDA memory (``cuda_peak``); faiss contenders are left out where faiss has no GPU."""
    import torch

    cuda = device != "cpu"
    _warm_up(x[:64], labels[:64], device)
    results = {}
    for name in CONTENDERS:
        if cuda and name.startswith("faiss") and faiss_gpu_missing():
            continue
        fn = contender(name, x, labels, device)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = fn()
        if cuda:
            torch.cuda.synchronize()
        results[name] = {"seconds": time.perf_counter() - start, "metrics": metrics,
                         "cuda_peak": torch.cuda.max_memory_allocated() if cuda else None}
    return results


def _child(name: str, data: str) -> None:
    with np.load(data) as f:
        x, labels = f["x"], f["labels"]
    fn = contender(name, x, labels)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    metrics = fn()
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(json.dumps({"seconds": seconds, "peak": peak, "metrics": metrics}))


def _in_child(name: str, data: str) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, __file__, "--child", name, data], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {name!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _disagreement(ours: dict, pml: dict) -> float:
    """Largest |ours - PML| over the shared metrics; an error above ``AGREEMENT`` (a bug, not rounding)."""
    pairs = [(f"recall@{k}", f"recall_at_{k}") for k in RECALL_AT] + [
        (key, key) for key in ("precision_at_1", "r_precision", "mean_average_precision_at_r")]
    worst = max(abs(ours[a] - pml[b]) for a, b in pairs)
    if worst > AGREEMENT:
        raise RuntimeError(f"ours and PML disagree by {worst:.3g}: ours {ours}, PML {pml}")
    return worst


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    n, n_classes = (N_QUICK, round(N_QUICK * CLASSES_FULL / N_FULL)) if quick else (N_FULL, CLASSES_FULL)
    x, labels = sop_like(n, n_classes)
    size = f"{n}x{DIM}" + ("" if device == "cpu" else f" on {device}")
    if quick or device != "cpu":
        results = _in_process(x, labels, device)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "embeddings.npz")
            np.savez(data, x=x, labels=labels)
            results = {name: _in_child(name, data) for name in CONTENDERS}
    worst = _disagreement(results["ours"]["metrics"], results["pml"]["metrics"])
    ours = results["ours"]["seconds"]
    depth = _depth(labels) + 1
    faiss_on = "faiss IndexFlatIP" + ("" if device == "cpu" else " on the GPU")
    if "faiss_floor" in results:
        floor, at_depth = results["faiss_floor"]["seconds"], results["faiss_depth"]["seconds"]
    else:
        floor = at_depth = None
        faiss_on += f" (not run: {faiss_gpu_missing()})"
    rows = [
        row(f"evaluate {size} R@1/10/100/1000+MAP@R+RP", ours, results["pml"]["seconds"], 0.5,
            reference_name=f"PML AccuracyCalculator k=1000 on {device}"),
        row(f"evaluate {size} vs faiss floor k={max(RECALL_AT) + 1}", ours, floor, 1.3,
            reference_name=f"{faiss_on} search k={max(RECALL_AT) + 1}"),
        row(f"evaluate {size} vs faiss search k={depth}", ours, at_depth, None,
            reference_name=f"{faiss_on} search k={depth}"),
        row(f"evaluate {size}, random rows, vs faiss floor", results["ours_random"]["seconds"], floor, 1.3,
            reference_name=f"{faiss_on} search k={max(RECALL_AT) + 1}"),
    ]
    rows.append(row(f"max |ours - PML| over the 7 metrics, {size}", worst, None, None, unit="",
                    reference_name="float32 near-ties only"))
    if device != "cpu":
        rows.append(row(f"evaluate {size} peak CUDA memory", float(results["ours"]["cuda_peak"]),
                        float(results["pml"]["cuda_peak"]), None, unit="B",
                        reference_name="PML AccuracyCalculator k=1000 (torch.cuda.max_memory_allocated)"))
    elif not quick:
        rows += [
            row(f"evaluate {size} peak RSS increase", results["ours"]["peak"], MEMORY_BUDGET, 1.0, unit="B",
                reference_name="3 GiB budget"),
            row(f"evaluate {size} peak RSS increase vs PML", results["ours"]["peak"], results["pml"]["peak"], None,
                unit="B", reference_name="PML AccuracyCalculator k=1000"),
        ]
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        print(format_table(run(quick="--quick" in sys.argv)))
