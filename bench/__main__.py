"""Run every benchmark in ``bench/`` and print one table.

    python -m bench                 # full sizes (minutes)
    python -m bench --quick         # small sizes (seconds), a smoke run
    python -m bench evaluator       # only bench_evaluator.py
    python -m bench --markdown docs/performance.md   # also write the table with the machine's description
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

from bench.common import format_table

HERE = Path(__file__).resolve().parent


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def markdown(rows: list[dict], title: str) -> str:
    from bench.common import _fmt

    lines = [f"## {title}", "", f"Machine: {machine()}. Measured {time.strftime('%Y-%m-%d')}.", "",
             "| benchmark | ours | reference | reference is | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "-" if r["target"] is None else f"≤ {r['target']:g}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['name']} | {_fmt(r['ours'], r['unit'])} | {_fmt(r['reference'], r['unit'])} | "
                     f"{r.get('reference_name', '')} | {r['ratio']:.2f} | {target} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="benchmark names (bench_<name>.py); all by default")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--markdown", help="append the table as a markdown section to this file")
    args = parser.parse_args(argv)
    available = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    names = args.names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    rows: list[dict] = []
    for name in names:
        print(f"running bench_{name} ...", file=sys.stderr, flush=True)
        rows.extend(importlib.import_module(f"bench.bench_{name}").run(quick=args.quick))
    if args.quick:  # the targets are set for the full sizes; a smoke run does not judge them
        for r in rows:
            r["met"] = None
    print(machine() + ("; quick run: targets not judged" if args.quick else ""))
    print(format_table(rows))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + markdown(rows, "quick run" if args.quick else "full run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
