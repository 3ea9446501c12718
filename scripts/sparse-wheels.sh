#!/usr/bin/env bash
# Install the optional `sparse` extra (torch-scatter, torch-sparse) into the venv given as $1.
# They have no wheels for this torch: they build from source once (about 11 minutes on 2 cores) into a
# cache outside the clone, and later installs reuse the cached wheels.
set -euo pipefail
venv=${1:-.venv}
cache=${PYGML_WHEEL_CACHE:-$HOME/.cache/pygml/wheels}
mkdir -p "$cache"
torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
cache="$cache/torch-$torch_version"
mkdir -p "$cache"
for spec in torch_scatter-2.1.2 torch_sparse-0.6.18; do
  if ! ls "$cache"/"$spec"-*.whl >/dev/null 2>&1; then
    echo "pygml: building ${spec%-*} ${spec##*-} for torch $torch_version (once; cached in $cache)"
    FORCE_ONLY_CPU=1 MAX_JOBS=${MAX_JOBS:-2} "$venv/bin/pip" wheel -q --no-deps --no-build-isolation \
      -w "$cache" "${spec%-*}==${spec##*-}"
  fi
done
"$venv/bin/pip" install -q --no-deps "$cache"/torch_scatter-2.1.2-*.whl "$cache"/torch_sparse-0.6.18-*.whl
