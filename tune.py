"""Tune a pygml method with Optuna: ``python tune.py --config configs/baseline/glyphs.yaml --trials 8 --out runs/tune
data.val_fraction=0.2``."""

import sys

from pygml.app.tune import tune_main

if __name__ == "__main__":
    sys.exit(tune_main())
