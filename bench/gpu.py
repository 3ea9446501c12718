"""The CUDA paths of pygml, checked and timed in one command on a GPU machine; a dry run without one.

    python -m bench.gpu --out DIR [--wheels DIR]    # on a GPU machine (what scripts/gpu-check.sh runs)
    python -m bench.gpu --out DIR --dry-run [--wheels DIR]

With ``--wheels DIR`` the wheels in DIR (what the GPU image lacks: a GPU build of faiss, omegaconf,
pytorch-metric-learning; ``scripts/gpu-wheels.sh`` prepares them) are installed first with
``pip install --no-index --find-links DIR --no-deps --target`` into a temporary folder that every
part then finds on its ``PYTHONPATH``. Then the parts run, each in a process of its own with its own
time limit, all within ``TOTAL_SECONDS``; a part that fails or runs out of time is recorded as such
and the others still run:

* ``tests``: ``pytest -m cuda`` over the test files that mark tests ``cuda``;
* ``evaluator``: ``bench_evaluator.run(device="cuda")``: ours, faiss's flat index (k = 1001) and PML's
  ``AccuracyCalculator``, all on the GPU, at 60,502 × 512;
* ``attention``: ``bench_intra_batch`` and ``bench_bgformer`` on CUDA at the paper sizes, against
  dense attention;
* ``steps``: ``bench_memory.step_rows`` on CUDA: one training step of each method at its paper's batch,
  fp32 and bf16, images/s and ``torch.cuda.max_memory_allocated``, against the baseline.

DIR/gpu-check.md gets the status of each part and the rows (``python -m bench``'s markdown table);
DIR/<part>.log each part's output.

The dry run needs no GPU: it checks the wheels folder (file names for CPython 3.12 on x86-64 Linux,
one version per package, and ``pip install --dry-run`` for that target), collects the tests the GPU run
would select (at least one), and runs every benchmark part at a tiny size on the CPU, the training
steps of one setting per method with a small backbone. Its table says in its first line that nothing was measured on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: time limit of each part, seconds; and of all parts together (the wheel install comes first, ≤ 60 s)
PARTS = {"tests": 150, "evaluator": 100, "attention": 70, "steps": 100}
TOTAL_SECONDS = 420
INSTALL_SECONDS = 60
#: the target the wheels must fit: the GPU machines' Python
WHEEL_PYTHON = "3.12"
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux1_x86_64")
#: the dry run's training steps: a small backbone whose 48 features suit 6 and 8 heads
DRY_STEP_OVERRIDES = ("model.backbone=small_cnn", "model.width=6")
DRY_HEADER = "**dry run: nothing was measured on a GPU.**"


class WheelsError(ValueError):
    """The wheels folder cannot be installed on the GPU machine as it is."""


def _python_fits(tag: str, abi: str) -> bool:
    """Whether a wheel of python tag ``tag`` and ABI tag ``abi`` installs on CPython 3.12."""
    if tag in ("py3", "cp312"):
        return abi in ("none", "abi3", "cp312")
    minor = re.fullmatch(r"cp3(\d+)", tag)
    return abi == "abi3" and minor is not None and int(minor.group(1)) <= 12


def check_wheels(folder: str | Path) -> list[Path]:
    """The wheel files of ``folder``, after checking that each suits CPython 3.12 on x86-64 Linux and
    that no package comes twice; a :class:`WheelsError` saying what is wrong otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WheelsError(f"wheels folder {folder} does not exist (prepare it with scripts/gpu-wheels.sh {folder})")
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise WheelsError(f"wheels folder {folder} holds no .whl file (prepare it with scripts/gpu-wheels.sh)")
    seen: dict[str, Path] = {}
    for wheel in wheels:
        parts = wheel.stem.split("-")
        if len(parts) not in (5, 6):
            raise WheelsError(f"{wheel.name} is not a wheel file name (name-version[-build]-python-abi-platform)")
        name, python, abi, platform = re.sub(r"[-_.]+", "-", parts[0]).lower(), parts[-3], parts[-2], parts[-1]
        if not any(_python_fits(tag, abi) for tag in python.split(".")):
            raise WheelsError(f"{wheel.name} is not for CPython {WHEEL_PYTHON} (tags {python}-{abi})")
        if platform != "any" and not set(platform.split(".")) & set(WHEEL_PLATFORMS):
            raise WheelsError(f"{wheel.name} is not for x86-64 Linux (platform {platform}); "
                              f"accepted: {', '.join(WHEEL_PLATFORMS)} or any")
        if name in seen:
            raise WheelsError(f"{seen[name].name} and {wheel.name} are two versions of {name}: keep one")
        seen[name] = wheel
    return wheels


def install_wheels(folder: str | Path, log: Path, dry: bool) -> str | None:
    """Install the checked wheels of ``folder`` into a new temporary folder and return it (``None`` in a
    dry run, where pip only resolves them for the GPU machines' Python)."""
    wheels = [str(w) for w in check_wheels(folder)]
    target = tempfile.mkdtemp(prefix="pygml-gpu-site-")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(folder), "--no-deps",
           "--no-compile", "--no-cache-dir", "--target", target]
    if dry:
        cmd += ["--dry-run", "--ignore-installed", "--only-binary=:all:", "--python-version", WHEEL_PYTHON,
                "--implementation", "cp", *[f"--platform={p}" for p in WHEEL_PLATFORMS]]
    with open(log, "w") as f:
        done = subprocess.run(cmd + wheels, stdout=f, stderr=subprocess.STDOUT, timeout=INSTALL_SECONDS, check=False)
    if done.returncode != 0:
        raise WheelsError(f"pip could not install the wheels of {folder} (exit {done.returncode}); see {log}")
    return None if dry else target


def cuda_test_files() -> list[str]:
    """The test files that mark tests ``cuda`` (read as text: collecting the whole suite takes long)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.cuda" in p.read_text())


def bench_rows(part: str, dry: bool) -> list[dict]:
    """The rows of benchmark part ``part``: on CUDA at full size, or at a tiny size on the CPU (dry run)."""
    import torch

    if not dry and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device: run on a GPU machine, or with --dry-run")
    device = "cpu" if dry else "cuda"
    if part == "evaluator":
        from bench import bench_evaluator

        return bench_evaluator.run(quick=dry, device=device)
    if part == "attention":
        from bench import bench_bgformer, bench_intra_batch

        return bench_intra_batch.run(quick=dry, device=device) + bench_bgformer.run(quick=dry, device=device)
    if part == "steps":
        from bench import bench_memory

        if not dry:
            return bench_memory.step_rows(device=device)
        one_per_method = {s[1]: s for s in reversed(bench_memory.STEP_SETTINGS)}  # the first setting of each
        return bench_memory.step_rows(quick=True, device=device, settings=list(one_per_method.values()),
                                      extra=DRY_STEP_OVERRIDES)
    raise ValueError(f"unknown benchmark part {part!r}; parts: {', '.join(p for p in PARTS if p != 'tests')}")


def _command(part: str, dry: bool, rows_file: Path) -> list[str]:
    if part == "tests":
        files = cuda_test_files()
        if not files:
            raise RuntimeError("no test file under tests/ marks a test cuda")
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *files] + (
            ["--collect-only"] if dry else [])
    return [sys.executable, "-m", "bench.gpu", "--part", part, "--rows", str(rows_file)] + (["--dry-run"] if dry else [])


def run_part(part: str, dry: bool, out: Path, timeout: float, env: dict) -> dict:
    """Run ``part`` in its own process within ``timeout`` seconds; its status, time, rows and summary."""
    rows_file, log = out / f"{part}.rows.json", out / f"{part}.log"
    started = time.perf_counter()
    result: dict = {"part": part, "rows": [], "summary": ""}
    try:
        with open(log, "w") as f:
            done = subprocess.run(_command(part, dry, rows_file), cwd=ROOT, env=env, stdout=f,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False)
        result["status"] = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    except subprocess.TimeoutExpired:
        result["status"] = f"timed out after {timeout:.0f} s"
    except (OSError, RuntimeError) as exc:
        result["status"] = f"failed: {exc}"
    result["seconds"] = time.perf_counter() - started
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    if part == "tests":
        result["summary"] = lines[-1] if lines else ""
        collected = re.search(r"(\d+)(?:/\d+)? tests? collected", result["summary"])
        if dry and result["status"] == "ok" and not (collected and int(collected.group(1)) > 0):
            result["status"] = "failed: no test selected by -m cuda"
    elif rows_file.exists():
        result["rows"] = json.loads(rows_file.read_text())
        rows_file.unlink()
    if result["status"] != "ok" and part != "tests" and lines:
        result["summary"] = lines[-1]
    return result


def report(results: list[dict], dry: bool, command: str) -> str:
    """The markdown of the run: a dry-run warning first, the parts' status, then each part's rows."""
    from bench.__main__ import machine, markdown

    lines = [DRY_HEADER + " The parts ran at tiny sizes on the CPU to check the command itself; no figure "
             "below is a GPU measurement.", ""] if dry else []
    lines += ["# GPU check", "", f"Command: `{command}`. Machine: {machine()}. {time.strftime('%Y-%m-%d %H:%M')}.",
              "", "| part | status | seconds | note |", "|---|---|---|---|"]
    for r in results:
        note = r["summary"].replace("|", "/")[:160]
        lines.append(f"| {r['part']} | {r['status']} | {r['seconds']:.0f} | {note} |")
    text = "\n".join(lines) + "\n"
    for r in results:
        if r["rows"]:
            text += "\n" + markdown(r["rows"], f"{r['part']}" + (" (dry run, CPU, tiny sizes)" if dry else ""))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for gpu-check.md and the parts' logs (created)")
    parser.add_argument("--wheels", help="folder of wheels to install first (scripts/gpu-wheels.sh prepares it)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: check the command at tiny sizes on the CPU")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one benchmark part in this process
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        Path(args.rows).write_text(json.dumps(bench_rows(args.part, args.dry_run)))
        return 0
    if not args.out:
        parser.error("--out DIR is required")
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; parts: {', '.join(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [str(ROOT)]
    results = []
    if args.wheels:
        started = time.perf_counter()
        try:
            site = install_wheels(args.wheels, out / "install.log", args.dry_run)
            status = "ok"
            if site:
                paths.insert(0, site)
        except (WheelsError, subprocess.TimeoutExpired) as exc:
            status = f"failed: {exc}"
        results.append({"part": "wheels", "status": status, "seconds": time.perf_counter() - started, "rows": [],
                        "summary": f"{len(list(Path(args.wheels).glob('*.whl')))} wheels in {args.wheels}"
                        + (" (pip --dry-run for CPython 3.12)" if args.dry_run else "")})
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    deadline = time.monotonic() + TOTAL_SECONDS
    for part in parts:
        left = deadline - time.monotonic()
        if left < 5:
            results.append({"part": part, "status": "not run: total time cap reached", "seconds": 0.0, "rows": [],
                            "summary": ""})
            continue
        print(f"gpu check: {part} (up to {min(PARTS[part], left):.0f} s) ...", file=sys.stderr, flush=True)
        results.append(run_part(part, args.dry_run, out, min(PARTS[part], left), env))
        print(f"gpu check: {part}: {results[-1]['status']} in {results[-1]['seconds']:.0f} s", file=sys.stderr,
              flush=True)
    command = "scripts/gpu-check.sh " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(results, args.dry_run, command.strip())
    (out / "gpu-check.md").write_text(text)
    print(text)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
