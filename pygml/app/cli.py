"""Command-line entry points: ``pygml-train`` / ``python train.py`` and ``pygml-eval`` / ``python eval.py``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from pygml.app import distributed
from pygml.app.reports import log, metrics_frame, metrics_table, setup_logging

#: errors that come from the user's input (config, paths, data, checkpoints): printed as one line
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)


def _fail(exc: BaseException) -> int:
    """Print a user error as one line (the full traceback with ``PYGML_DEBUG=1``) and return exit code 2."""
    if os.environ.get("PYGML_DEBUG"):
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    return 2


def import_modules(names: Sequence[str]) -> None:
    """Import the user modules named by ``--import`` (they register their parts in pygml's registries); a
    module that cannot be imported is an ``ImportError`` naming it."""
    for name in names:
        if name.endswith(".py") or os.sep in name:
            path = Path(name).resolve()
            sys.path.insert(0, str(path.parent))
            name = path.stem
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"--import {name}: {err}") from err


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module (or a .py file) first, e.g. one that registers a method with "
                             "pygml.app.register_method; repeatable")


def _run(main: Callable[[], int]) -> int:
    """Run a command's body: user errors as one line and exit code 2, the process group closed after."""
    setup_logging()
    try:
        return main()
    except USER_ERRORS as exc:
        return _fail(exc)
    finally:
        distributed.shutdown()


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pygml-train",
        description="Train a pygml method. Example: python train.py --config configs/baseline/glyphs.yaml train.epochs=3",
    )
    parser.add_argument("--config", "-c", help="YAML config (see configs/); defaults apply without one")
    parser.add_argument("--resume", action="store_true", help="continue from <train.out_dir>/checkpoint.pt")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _common(parser)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        import_modules(args.imports)
        from pygml.app.config import config_to_yaml, load_config
        from pygml.app.engine import train

        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(config_to_yaml(cfg))
            return 0
        result = train(cfg, resume=args.resume)
        if distributed.is_main() and "test" in result:
            print(f"\n{cfg.method} on {cfg.data.name}, last epoch ({result['epochs_done']}), test split:")
            print(metrics_table(result["test"], result["eval"]))
        return 0

    return _run(body)


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
    parser.add_argument("--report", metavar="DIR", help="also write an HTML report to DIR/index.html (metrics, Recall@K "
                        "curve, retrieval examples, worst queries, config; opens offline)")
    _common(parser)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="overrides of the stored config, e.g. data.root=/data/CUB_200_2011")
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        import_modules(args.imports)
        from pygml.app.evaluate import evaluate_checkpoint

        result = evaluate_checkpoint(args.checkpoint, args.overrides, device=args.device, refine=args.refine,
                                     plots=args.plots)
        if not result["metrics"]:  # a rank other than 0 under torchrun: rank 0 reports
            return 0
        out = Path(args.out) if args.out else Path(args.checkpoint).parent
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_metrics.json").write_text(json.dumps({**result["metrics"], "eval": result["eval"]}, indent=2))
        metrics_frame({**result["metrics"]["test"], **{f"eval_{k}": v for k, v in result["eval"].items()}}).to_csv(
            out / "eval_metrics.csv", index=False)
        print(f"{result['method']} checkpoint {args.checkpoint}, test split of {result['data']}:")
        print(metrics_table(result["metrics"]["test"], result["eval"]))
        log.info("written: %s, %s", out / "eval_metrics.json", out / "eval_metrics.csv")
        if args.report:
            from pygml.app.report_html import evaluation_report

            log.info("report: %s", evaluation_report(args.checkpoint, args.overrides, result["metrics"], args.report,
                                                     device=args.device))
        return 0

    return _run(body)


__all__ = ["eval_main", "import_modules", "train_main"]
