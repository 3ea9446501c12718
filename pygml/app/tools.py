"""Command-line tools from a trained checkpoint to a search: ``pygml-embed``, ``pygml-index``, ``pygml-search``
and ``pygml-export``.

::

    pygml-embed  --checkpoint runs/photos/checkpoint.pt --folder photos --out runs/photos/photos.npy
    pygml-index  runs/photos/photos.npy --out runs/photos/photos.faiss
    pygml-search --index runs/photos/photos.faiss --checkpoint runs/photos/checkpoint.pt photos/shoes/1.jpg
    pygml-export --checkpoint runs/photos/checkpoint.pt --out model.onnx --out model.pt

Like ``pygml-train`` and ``pygml-eval``, a wrong input (a missing file, a checkpoint of another format, an
index of another dimension) is one line on stderr and exit code 2; every file is written atomically.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from pygml.app.cli import _common, _run, import_modules
from pygml.app.reports import log

#: overrides applied to a checkpoint's config when it is loaded for inference: the trained weights replace
#: any initial ones, so the file ``model.pretrained`` named is not needed
INFERENCE_OVERRIDES = ("model.pretrained=null",)


def _inputs(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("images", nargs="*", metavar="IMAGE", help=f"{what} image files")
    parser.add_argument("--folder", metavar="DIR", help=f"{what} every image below DIR (labels: the class folders)")
    parser.add_argument("--csv", dest="manifest", metavar="MANIFEST",
                        help=f"{what} the images of a CSV or parquet manifest path,label[,split]")
    parser.add_argument("--list", dest="list_file", metavar="FILE",
                        help=f"{what} the images of a text file, one path a line (relative to the file)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: eval.batch_size "
                        "of the checkpoint's config)")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="skip images that are missing or cannot be decoded (counted and named) instead of failing")


def _load(checkpoint: str, device: str) -> tuple[Any, Any, Any, Any]:
    """``(method on device, config, test transform, device)`` of a checkpoint."""
    from pygml.app.builders import build_transforms_of
    from pygml.app.evaluate import load_trained, select_device

    method, cfg = load_trained(checkpoint, INFERENCE_OVERRIDES)
    dev = select_device(device)
    return method.to(dev), cfg, build_transforms_of(cfg.data)[1], dev


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be positive, got {value}")


def embed_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pygml-embed",
        description="Embed images with a trained checkpoint: writes OUT.npy with OUT.files.csv beside it (the "
                    "ordered path,label list), or one OUT.parquet. Large sets are embedded in shards under "
                    "OUT.parts/; run the same command again after an interruption to resume. Example: pygml-embed "
                    "--checkpoint runs/photos/checkpoint.pt --folder photos --out runs/photos/photos.npy",
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by pygml-train")
    _inputs(parser, "embed")
    parser.add_argument("--out", required=True, help="OUT.npy or OUT.parquet (its folder must exist)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="images per shard (default 10000)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _model_options(parser)
    _common(parser)
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        from pygml.app.embedding import (check_exist, embed_in_shards, embedding_format, list_inputs, remove_shards,
                                         sha256_file, write_embeddings)
        from pygml.atomic import check_folder

        import_modules(args.imports)
        embedding_format(args.out)
        check_folder(args.out, "embeddings")
        _positive("--batch-size", args.batch_size)
        _positive("--shard-size", args.shard_size)
        items = list_inputs(folder=args.folder, manifest=args.manifest, list_file=args.list_file, files=args.images)
        if not args.skip_corrupt:
            check_exist(items)
        method, cfg, transform, device = _load(args.checkpoint, args.device)
        log.info("embedding %d images with %s on %s", len(items), args.checkpoint, device)
        emb, rows = embed_in_shards(method.embed, items, transform, args.out, model=sha256_file(args.checkpoint),
                                    shard_size=args.shard_size, batch_size=args.batch_size or cfg.eval.batch_size,
                                    device=device, num_workers=args.num_workers, skip_corrupt=args.skip_corrupt,
                                    progress=not args.no_progress, eval_module=method)
        written = write_embeddings(args.out, emb, [items.paths[i] for i in rows], [items.labels[i] for i in rows])
        remove_shards(args.out)
        skipped = sorted(set(range(len(items))) - set(rows.tolist()))
        if skipped:
            shown = ", ".join(items.paths[i] for i in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            log.warning("skipped %d of %d images that are missing or cannot be decoded: %s", len(skipped), len(items),
                        shown)
        print(f"embedded {len(rows)} images ({emb.shape[1]}-d): {', '.join(map(str, written))}")
        return 0

    return _run(body)


def index_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pygml-index",
        description="Build a faiss index of embeddings written by pygml-embed: INDEX (faiss format) and INDEX.json "
                    "(the path and label of each row). Example: pygml-index runs/photos/photos.npy --out "
                    "runs/photos/photos.faiss",
    )
    parser.add_argument("embeddings", help="EMB.npy (with EMB.files.csv beside it) or EMB.parquet")
    parser.add_argument("--out", required=True, help="the index file to write (its folder must exist)")
    parser.add_argument("--search", default="exact",
                        help="exact (exhaustive, the default) or a faiss index factory string for large sets, e.g. "
                             "IVF1024,Flat or IVF1024,PQ32 (as eval.search)")
    parser.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
    parser.add_argument("--nprobe", type=int, default=32, help="inverted lists an IVF index visits per query")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training sample of an approximate index")
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        from pygml.app.embedding import read_embeddings
        from pygml.atomic import check_folder
        from pygml.search import build_search_index, description_path, save_index

        check_folder(args.out, "index")
        x, paths, labels = read_embeddings(args.embeddings)
        index = build_search_index(x, paths, labels, search=args.search, metric=args.metric, nprobe=args.nprobe,
                                   seed=args.seed)
        out = save_index(index, args.out)
        print(f"indexed {len(index)} images ({index.dim}-d, {args.search}, {args.metric}): {out}, "
              f"{description_path(out)}")
        return 0

    return _run(body)


def _open(path: str) -> Any:
    from pygml.data import CorruptImageError, decode_image

    try:
        return decode_image(path)
    except (FileNotFoundError, CorruptImageError):
        return None


def _hit(a: Optional[str], b: Optional[str]) -> Optional[bool]:
    return None if a is None or b is None else a == b


def search_results(index: Any, query_paths: Sequence[str], query_labels: Sequence[Optional[str]],
                   scores: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    """One row per (query, rank): ``query, query_label, rank, path, label, <score name>, hit``."""
    records = []
    for q, (path, label) in enumerate(zip(query_paths, query_labels)):
        for rank, (score, i) in enumerate(zip(scores[q], ids[q]), start=1):
            if i < 0:
                continue
            found = index.labels[i]
            records.append({"query": path, "query_label": label, "rank": rank, "path": index.paths[i], "label": found,
                            index.score_name: float(score), "hit": _hit(label, found)})
    return pd.DataFrame(records)


def results_text(results: pd.DataFrame, score: str) -> str:
    """The results as a plain table per query: rank, score, label (when known; ✓ same as the query's, ✗ not), path."""
    lines = []
    for n, (query, rows) in enumerate(results.groupby("query", sort=False), start=1):
        label = rows["query_label"].iloc[0]
        lines.append(f"query {n}: {query}" + (f"  (label {label})" if label is not None else ""))
        labelled = rows["label"].notna().any()
        width = max([len("label")] + [len(str(v)) for v in rows["label"] if v is not None]) + 2 if labelled else 0
        lines.append(f"  {'rank':>4}  {score:>10}  " + (f"{'label':<{width}}  " if labelled else "") + "path")
        for r in rows.to_dict("records"):
            mark = "" if r["hit"] is None else (" ✓" if r["hit"] else " ✗")
            cell = f"{(r['label'] or '') + mark:<{width}}  " if labelled else ""
            lines.append(f"  {r['rank']:>4}  {r[score]:>10.4f}  {cell}{r['path']}")
        lines.append("")
    return "\n".join(lines)


def write_search_outputs(results: pd.DataFrame, score: str, out: Path, title: str) -> list[Path]:
    """``results.csv``, ``results.png`` (a retrieval grid) and ``results.html`` in ``out``."""
    from pygml.app.pages import Tile, esc, page, retrieval_grid, row, write_text

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.csv"]
    write_text(written[0], results.to_csv(index=False))
    rows, sections = [], []
    for n, (query, hits) in enumerate(results.groupby("query", sort=False), start=1):
        label = hits["query_label"].iloc[0]
        tiles = [Tile(_open(query), [f"query {n}", Path(query).name] + ([f"label {label}"] if label else []),
                      query=True)]
        for r in hits.to_dict("records"):
            tiles.append(Tile(_open(r["path"]), [f"#{r['rank']}  {r[score]:.4f}", Path(r["path"]).name] +
                              ([str(r["label"])] if r["label"] is not None else []), hit=r["hit"]))
        rows.append(tiles)
        sections.append(f"<h2>query {n}: {esc(query)}</h2>" + row(tiles) +
                        "<p class='note'>" + "<br>".join(f"#{r['rank']} {esc(r['path'])}" for r in
                                                         hits.to_dict("records")) + "</p>")
    written.append(retrieval_grid(rows, out / "results.png"))
    intro = (f"<p class='note'>{esc(title)}. Scores: {esc(score)}. Frames: green = same label as the query, red = "
             "another label, grey = label unknown.</p>")
    written.append(write_text(out / "results.html", page("pygml search results", intro + "".join(sections))))
    return written


def search_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pygml-search",
        description="Find the images of an index nearest to query images (embedded with --checkpoint) or to query "
                    "embeddings; prints the top-k per query and, with --out, writes results.csv, a retrieval grid "
                    "(results.png) and a page (results.html). Example: pygml-search --index runs/photos/photos.faiss "
                    "--checkpoint runs/photos/checkpoint.pt photos/shoes/1.jpg --out runs/photos/search",
    )
    parser.add_argument("--index", required=True, help="an index written by pygml-index")
    _inputs(parser, "query with")
    parser.add_argument("--embeddings", metavar="EMB", help="query with stored embeddings (.npy or .parquet) instead")
    parser.add_argument("--checkpoint", help="the checkpoint that embeds query images (the one the index came from)")
    parser.add_argument("-k", "--top", type=int, default=5, help="results per query (default 5)")
    parser.add_argument("--exclude-self", action="store_true",
                        help="leave out of each query's results the index row of the query's own file")
    parser.add_argument("--out", metavar="DIR", help="also write results.csv, results.png and results.html to DIR")
    _model_options(parser)
    _common(parser)
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        from pygml.app.embedding import embed_items, list_inputs, read_embeddings
        from pygml.search import load_index, search

        import_modules(args.imports)
        _positive("-k", args.top)
        _positive("--batch-size", args.batch_size)
        image_inputs = bool(args.images or args.folder or args.manifest or args.list_file)
        if image_inputs == bool(args.embeddings):
            raise ValueError("give the queries one way: image files (or --folder / --csv / --list) with --checkpoint, "
                             "or --embeddings")
        if image_inputs and not args.checkpoint:
            raise ValueError("query images are embedded by a model: pass --checkpoint, the checkpoint the index's "
                             "embeddings came from")
        index = load_index(args.index)
        if args.embeddings:
            queries, paths, labels = read_embeddings(args.embeddings)
        else:
            items = list_inputs(folder=args.folder, manifest=args.manifest, list_file=args.list_file,
                                files=args.images)
            method, cfg, transform, device = _load(args.checkpoint, args.device)
            queries, rows = embed_items(method.embed, items, transform, device=device, eval_module=method,
                                        batch_size=args.batch_size or cfg.eval.batch_size,
                                        skip_corrupt=args.skip_corrupt)
            paths, labels = [items.paths[i] for i in rows], [items.labels[i] for i in rows]
        exclude = None
        if args.exclude_self:
            row_of = {os.path.abspath(p): i for i, p in enumerate(index.paths)}
            exclude = [row_of.get(os.path.abspath(p), -1) for p in paths]
        scores, ids = search(index, queries, args.top, exclude=exclude)
        results = search_results(index, paths, labels, scores, ids)
        print(results_text(results, index.score_name))
        if args.out:
            title = f"{len(paths)} queries against {args.index} ({len(index)} images, {index.search}, {index.metric})"
            written = write_search_outputs(results, index.score_name, Path(args.out), title)
            log.info("written: %s", ", ".join(map(str, written)))
        return 0

    return _run(body)


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pygml-export",
        description="Export a checkpoint's embedding path (method.embed: images (B, 3, S, S) in [0, 1] → L2-normalised "
                    "embeddings (B, d); no batch graph) to TorchScript (.pt) and/or ONNX (.onnx), with a dynamic "
                    "batch size, and check each export against PyTorch on a batch of another size. Example: "
                    "pygml-export --checkpoint runs/photos/checkpoint.pt --out model.onnx --out model.pt",
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by pygml-train")
    parser.add_argument("--out", action="append", required=True, metavar="FILE",
                        help="FILE.onnx (ONNX) or FILE.pt / .ts / .torchscript (TorchScript); repeatable")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side S of the images the model takes (default: data.image_size of the checkpoint)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch size of the traced example (default 2); "
                        "the check runs on one more")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest absolute difference from PyTorch accepted")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    _common(parser)
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        import torch

        from pygml.atomic import check_folder
        from pygml.export import export_format, export_model

        import_modules(args.imports)
        for out in args.out:
            export_format(out)
            check_folder(out, "export")
        _positive("--batch-size", args.batch_size)
        _positive("--image-size", args.image_size)
        method, cfg, transform, _ = _load(args.checkpoint, "cpu")
        size = args.image_size or cfg.data.image_size
        example = torch.rand((args.batch_size, 3, size, size), generator=torch.Generator().manual_seed(1))
        metadata = {"pygml.checkpoint": os.path.abspath(args.checkpoint), "pygml.method": cfg.method,
                    "pygml.embedding_dim": cfg.model.embedding_dim, "pygml.image_size": size,
                    "pygml.input": f"images: float32 (B, 3, {size}, {size}), RGB in [0, 1], after the test transform",
                    "pygml.output": f"embeddings: float32 (B, {cfg.model.embedding_dim}), L2-normalised",
                    "pygml.test_transform": " ".join(repr(transform).split())}
        results = [export_model(method, out, example, atol=args.atol, metadata=metadata, opset=args.opset)
                   for out in args.out]
        print(f"{'format':<12} {'max |diff| vs PyTorch':>22} {'batch':>6}  file")
        for r in results:
            print(f"{r.format:<12} {r.max_abs_diff:>22.3g} {r.check_batch:>6}  {r.path}")
        print(f"input: images (B, 3, {size}, {size}) in [0, 1] after the test transform; B is dynamic; every export is "
              f"within {args.atol:g} of PyTorch")
        return 0

    return _run(body)


__all__ = ["INFERENCE_OVERRIDES", "embed_main", "export_main", "index_main", "results_text", "search_main",
           "search_results", "write_search_outputs"]
