"""Command-line entry points: ``pygml-train`` / ``python train.py`` and ``pygml-eval`` / ``python eval.py``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from pygml.config import ConfigError


#: errors that come from the user's input (config, paths, data, checkpoints): printed as one line
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)


def _fail(exc: BaseException) -> int:
    """Print a user error as one line (the full traceback with ``PYGML_DEBUG=1``) and return exit code 2."""
    if os.environ.get("PYGML_DEBUG"):
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    return 2


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pygml-train",
        description="Train a pygml method. Example: python train.py --config configs/baseline/glyphs.yaml train.epochs=3",
    )
    parser.add_argument("--config", "-c", help="YAML config (see configs/); defaults apply without one")
    parser.add_argument("--resume", action="store_true", help="continue from <train.out_dir>/checkpoint.pt")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    args = parser.parse_args(argv)

    from pygml.config import config_to_yaml, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        return _fail(exc)
    if args.print_config:
        print(config_to_yaml(cfg))
        return 0
    from pygml import distributed
    from pygml.engine import train

    try:
        train(cfg, resume=args.resume)
    except USER_ERRORS as exc:
        return _fail(exc)
    finally:
        distributed.shutdown()
    return 0


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pygml-eval",
        description="Evaluate a trained checkpoint on its test split (or another data root) and print the metrics.",
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by train.py")
    parser.add_argument("--out", help="folder for eval_metrics.json / eval_metrics.csv (default: the checkpoint's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--refine", type=int, default=0, metavar="K",
                        help="Intra-Batch only: refine test embeddings with the MPN over each query's "
                             "k-reciprocal neighbourhood of size K (the paper's supplementary)")
    parser.add_argument("--plots", metavar="DIR", help="also write plots (Recall@K curve, retrieval grid) to DIR")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="overrides of the stored config, e.g. data.root=/data/CUB_200_2011")
    args = parser.parse_args(argv)

    from pygml.evaluate_checkpoint import evaluate_checkpoint
    from pygml.evaluation import metrics_frame, metrics_table

    from pygml import distributed

    try:
        result = evaluate_checkpoint(args.checkpoint, args.overrides, device=args.device, refine=args.refine,
                                     plots=args.plots)
    except USER_ERRORS as exc:
        return _fail(exc)
    finally:
        distributed.shutdown()
    if not result["metrics"]:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_metrics.json").write_text(json.dumps(result["metrics"], indent=2))
    metrics_frame(result["metrics"]["test"]).to_csv(out / "eval_metrics.csv", index=False)
    print(f"{result['method']} checkpoint {args.checkpoint}, test split of {result['data']}:")
    print(metrics_table(result["metrics"]["test"]))
    print(f"written: {out / 'eval_metrics.json'}, {out / 'eval_metrics.csv'}")
    return 0
