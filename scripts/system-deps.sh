#!/usr/bin/env bash
# Debian packages pygml's embedded data needs: the fonts the glyphs dataset is rendered from and
# Fashion-MNIST; and Chromium, in which the tests render the evaluation report. Skips the install when
# everything is present already.
set -euo pipefail
cd "$(dirname "$0")/.."
# the font packages are those the glyphs manifest was made from (one list, in the manifest)
read -r -a packages < <(python3 -c "import json; print(' '.join(json.load(open('pygml/data/glyphs_manifest.json'))['variants']['full']['packages']))")
packages+=(dataset-fashion-mnist)
# the headless browser of tests/app/test_report.py (chromium-driver: for tools that drive it over WebDriver)
packages+=(chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "pygml: cannot install ${missing[*]}: no apt-get here. Install them with your system's package manager," >&2
  echo "or use the glyphs_matplotlib dataset (data.name=glyphs_matplotlib), which needs no system fonts." >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "pygml: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
