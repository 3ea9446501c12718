"""Evaluate a checkpoint: ``python eval.py --checkpoint runs/x/checkpoint.pt [key.sub=value ...]``."""

import sys

from pygml.app.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
