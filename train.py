"""Train a pygml method: ``python train.py --config configs/baseline/glyphs.yaml [key.sub=value ...]``."""

import sys

from pygml.app.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
