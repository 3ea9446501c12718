"""Command-line entry points: ``pygml-train`` / ``python train.py`` and ``pygml-eval`` / ``python eval.py``.

Failures the user can act on end in one line on stderr (the traceback with ``PYGML_DEBUG=1``), printed
once under torchrun (by rank 0) when every rank meets them, and an exit status that says what happened
(``docs/reliability.md``):

====  ==========================================================================================
0     done
1     the run failed: a non-finite loss, a data-loader worker that died (or an unexpected error,
      with its traceback)
2     a user error: config, paths, data, checkpoints, a run directory in use or holding a run
74    a run file could not be written (disk full, permission, directory gone): ``EX_IOERR``
75    preempted (SIGTERM or SIGUSR1) after writing a checkpoint: ``EX_TEMPFAIL``, run the same
      command with ``--resume auto``
130   interrupted by Ctrl-C
====  ==========================================================================================
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from pygml.app import distributed
from pygml.app.checkpoint import CheckpointError
from pygml.app.config import ConfigError
from pygml.app.loading import LoaderWorkerError
from pygml.app.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, Preempted
from pygml.app.reports import log, metrics_frame, metrics_table, setup_logging
from pygml.app.rundir import RunDirError
from pygml.app.storage import StorageError, atomic_write

EXIT_FAILED, EXIT_USER_ERROR, EXIT_STORAGE = 1, 2, 74
#: errors that come from the user's input (config, paths, data, checkpoints, the run directory)
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)
#: failures reported in one line, with their exit status (the first class that matches)
FAILURES = ((StorageError, EXIT_STORAGE), (USER_ERRORS, EXIT_USER_ERROR), (LoaderWorkerError, EXIT_FAILED),
            (FloatingPointError, EXIT_FAILED))
#: failures every rank meets alike under torchrun: rank 0 alone prints them
SAME_ON_EVERY_RANK = (ConfigError, CheckpointError, RunDirError, StorageError, FloatingPointError, KeyboardInterrupt)


def _report(exc: BaseException, text: str) -> None:
    """Print ``text`` to stderr, once under torchrun for a failure every rank meets, else with the rank."""
    rank = distributed.env_info().rank
    if rank == 0:
        print(text, file=sys.stderr)
    elif not isinstance(exc, SAME_ON_EVERY_RANK):
        print(f"rank {rank}: {text}", file=sys.stderr)


def _fail(exc: BaseException) -> int:
    """Report an expected failure as one line (the full traceback with ``PYGML_DEBUG=1``) and return its
    exit status; anything else is raised."""
    if os.environ.get("PYGML_DEBUG"):
        raise exc
    if isinstance(exc, Preempted):
        return EXIT_PREEMPTED  # the run has logged it
    if isinstance(exc, KeyboardInterrupt):
        _report(exc, f"{exc}" if str(exc) else "interrupted")
        return EXIT_INTERRUPTED
    code = next(code for kinds, code in FAILURES if isinstance(exc, kinds))
    _report(exc, f"error: {exc}")
    return code


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
    """Run a command's body: expected failures as one line and their exit status, the process group closed
    after."""
    setup_logging()
    try:
        return main()
    except (Preempted, KeyboardInterrupt, StorageError, LoaderWorkerError, FloatingPointError, *USER_ERRORS) as exc:
        return _fail(exc)
    finally:
        distributed.shutdown()


#: what ``--resume`` takes; ``--resume`` alone is ``must``
RESUME_CHOICES = ("auto", "must", "true")


def _resume_value(argv: Sequence[str]) -> list[str]:
    """``argv`` with a bare ``--resume`` written ``--resume=must`` when the next word is not one of
    :data:`RESUME_CHOICES`, so ``--resume train.epochs=3`` keeps the override."""
    argv = list(argv)
    return [("--resume=must" if word == "--resume" and (i + 1 == len(argv) or argv[i + 1] not in RESUME_CHOICES)
             else word) for i, word in enumerate(argv)]


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pygml-train",
        description="Train a pygml method. Example: python train.py --config configs/baseline/glyphs.yaml train.epochs=3",
    )
    parser.add_argument("--config", "-c", help="YAML config (see configs/); defaults apply without one")
    parser.add_argument("--resume", nargs="?", const="must", choices=RESUME_CHOICES,
                        help="continue from <train.out_dir>/checkpoint.pt: alone (or 'true'), the checkpoint must "
                             "exist; 'auto' continues it when there is one and starts afresh otherwise, so a "
                             "requeued or restarted command needs no edit (default: train.resume)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a train.out_dir that holds a run, deleting its run files")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume with config changes that alter the run (method options, data, batch, model, "
                             "optimiser, ...); they are printed either way")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _common(parser)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    args = parser.parse_intermixed_args(_resume_value(sys.argv[1:] if argv is None else argv))

    def body() -> int:
        import_modules(args.imports)
        from pygml.app.config import config_to_yaml, load_config
        from pygml.app.engine import train

        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(config_to_yaml(cfg))
            return 0
        result = train(cfg, resume=args.resume, overwrite=args.overwrite,
                       allow_config_change=args.allow_config_change)
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
        atomic_write(out / "eval_metrics.json", json.dumps({**result["metrics"], "eval": result["eval"]}, indent=2))
        atomic_write(out / "eval_metrics.csv", metrics_frame(
            {**result["metrics"]["test"], **{f"eval_{k}": v for k, v in result["eval"].items()}}).to_csv(index=False))
        print(f"{result['method']} checkpoint {args.checkpoint}, test split of {result['data']}:")
        print(metrics_table(result["metrics"]["test"], result["eval"]))
        log.info("written: %s, %s", out / "eval_metrics.json", out / "eval_metrics.csv")
        if args.report:
            from pygml.app.report_html import evaluation_report

            log.info("report: %s", evaluation_report(args.checkpoint, args.overrides, result["metrics"], args.report,
                                                     device=args.device))
        return 0

    return _run(body)


__all__ = ["EXIT_FAILED", "EXIT_STORAGE", "EXIT_USER_ERROR", "FAILURES", "RESUME_CHOICES", "USER_ERRORS", "eval_main",
           "import_modules", "train_main"]
