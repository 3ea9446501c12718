#!/usr/bin/env bash
# Prepare the wheels folder that scripts/gpu-check.sh --wheels DIR installs on a GPU machine: the
# packages pygml needs that the GPU image lacks, for CPython 3.12 on x86-64 Linux, without their
# dependencies (the image has numpy, torch and the CUDA libraries).
#
#   scripts/gpu-wheels.sh DIR [FAISS]
#
# FAISS is the faiss distribution to fetch (default faiss-cpu==1.15.1, 19 MB). A GPU build does not fit
# the device machine's 64 MiB limit on what travels with the working tree (checked at the end):
# faiss-gpu 1.15.1 is a 135 MB wheel and needs CUDA 12 runtime and cuBLAS wheels besides, while the GPU
# image's torch is built for CUDA 13. With faiss-cpu the faiss GPU test is skipped and the evaluator's
# faiss GPU rows say "not run"; PML's calculator then searches with faiss on the CPU.
set -euo pipefail
dir="${1:?usage: scripts/gpu-wheels.sh DIR [FAISS]}"
faiss="${2:-faiss-cpu==1.15.1}"
mkdir -p "$dir"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dir" "$faiss" omegaconf==2.4.0 pytorch-metric-learning==2.9.0
size=$(du -sm "$dir" | cut -f1)
echo "$dir: $(ls "$dir"/*.whl | wc -l) wheels, ${size} MiB"
if (( size > 60 )); then
  echo "error: $dir is ${size} MiB; the working tree that travels to the GPU machine may hold 64 MiB in all" >&2
  exit 1
fi
