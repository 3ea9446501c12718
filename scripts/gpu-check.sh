#!/usr/bin/env bash
# The CUDA paths of pygml, checked and timed in one command on a GPU machine (8 minutes at most).
#
#   scripts/gpu-check.sh --out DIR [--wheels DIR]            # on a GPU machine
#   scripts/gpu-check.sh --out DIR [--wheels DIR] --dry-run  # anywhere: checks the command, measures nothing
#
# Installs the wheels of --wheels (scripts/gpu-wheels.sh prepares them) into a temporary folder, runs
# `pytest -m cuda` and the GPU benchmarks, each part with its own time limit, and writes DIR/gpu-check.md.
# Everything is done by `python -m bench.gpu` (see its docstring); PYTHON chooses the interpreter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m bench.gpu "$@"
