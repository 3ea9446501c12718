"""Shared helpers of the benchmarks: timing and the result table.

Every benchmark module exposes ``run(quick: bool = False) -> list[dict]``; each row has the keys
``name``, ``ours``, ``reference`` (seconds or bytes, measured in the same process), ``ratio``
(ours / reference), ``target`` (the largest acceptable ratio, or ``None``), ``met`` and ``unit``.
"""

from __future__ import annotations

import gc
import time
from typing import Callable, Optional

import torch


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def row(name: str, ours: float, reference: Optional[float], target: Optional[float], unit: str = "s",
        reference_name: str = "") -> dict:
    ratio = ours / reference if reference else float("nan")
    met = None if target is None or reference is None else ratio <= target
    return {"name": name, "ours": ours, "reference": reference, "reference_name": reference_name,
            "ratio": ratio, "target": target, "met": met, "unit": unit}


def _fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.4g} {unit}"


def format_table(rows: list[dict]) -> str:
    head = f"{'name':52s} {'ours':>12s} {'reference':>12s} {'ratio':>7s} {'target':>7s}  met  reference is"
    lines = [head, "-" * len(head)]
    for r in rows:
        target = "-" if r["target"] is None else f"≤{r['target']:g}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(
            f"{r['name']:52s} {_fmt(r['ours'], r['unit']):>12s} {_fmt(r['reference'], r['unit']):>12s} "
            f"{r['ratio']:7.2f} {target:>7s}  {met:3s}  {r.get('reference_name', '')}"
        )
    return "\n".join(lines)
