"""From a folder or a manifest of one's own images to a search and an exported model: pygml-train on each,
then pygml-embed, pygml-index, pygml-search and pygml-export, and a clear error for each bad input."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pygml.app import tools
from pygml.app.cli import train_main
from tests.image_trees import CORRUPT, SINGLETON, make_manifest, make_tree

#: a short run on tiny images: the small CNN at 16 px, 2 P×K steps, a learning rate that moves it
SHORT_RUN = ("data.image_size=16", "model.embedding_dim=16", "train.classes_per_batch=3",
             "train.samples_per_class=2", "train.epochs=2", "train.max_steps_per_epoch=2", "train.progress=false",
             "eval.recall_at=[1,2]", "eval.nmi=false", "optim.lr=0.01")


pytestmark = pytest.mark.usefixtures("pygml_log_handlers_removed")


def run(main, *args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A short run trained on an image folder (one tree, a corrupt file skipped, a singleton class dropped)."""
    root = tmp_path_factory.mktemp("own")
    photos = make_tree(root / "photos")
    with pytest.warns(UserWarning) as record:
        assert run(train_main, "data.name=folder", f"data.root={photos}", "data.skip_corrupt=true", *SHORT_RUN,
                   "model.width=8", f"train.out_dir={root / 'run'}") == 0
    messages = [str(w.message) for w in record]
    assert any(f"skipped 1 of 32 images that are missing or corrupt ({photos / 'c0' / CORRUPT})" in m for m in messages)
    assert any(f"with a single image (no pair to learn from or to find) ('{SINGLETON}')" in m for m in messages)
    return root, photos, root / "run" / "checkpoint.pt"


def test_training_on_a_folder_reports_its_counts(folder_run):
    root, photos, checkpoint = folder_run
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["finished"] and 0 <= metrics["test"]["recall@1"] <= 1
    assert (root / "run" / "config.yaml").read_text().count("name: folder") == 1


def test_training_on_a_manifest_with_a_timm_backbone_then_export(tmp_path, capsys):
    pytest.importorskip("timm")
    pytest.importorskip("onnxruntime")
    manifest = make_manifest(tmp_path / "shop", split=True)
    with pytest.warns(UserWarning) as record:
        assert run(train_main, "data.name=csv", f"data.root={manifest}", "data.skip_corrupt=true", *SHORT_RUN,
                   "model.backbone=timm:test_resnet", "model.input_size=32", f"train.out_dir={tmp_path / 'run'}") == 0
    assert any("train: skipped 1 of 17 images" in str(w.message) for w in record)
    err = capsys.readouterr().err
    assert f"manifest {manifest}: train 15 images / 3 classes, test 15 images / 3 classes" in err
    assert "timm:test_resnet: images resized to 32×32" in err
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert run(tools.export_main, "--checkpoint", checkpoint, "--out", tmp_path / "m.onnx", "--out",
               tmp_path / "m.pt") == 0
    out = capsys.readouterr().out
    assert "onnx" in out and "torchscript" in out and "within 0.0001 of PyTorch" in out
    compare_exports(checkpoint, tmp_path / "m.onnx", tmp_path / "m.pt", sorted((tmp_path / "shop" / "images").rglob("*.png")))


def compare_exports(checkpoint: Path, onnx_file: Path, script_file: Path, images: list[Path]) -> None:
    """Both exports give the PyTorch embeddings of real images, at a batch size other than the traced one."""
    import onnx
    import onnxruntime

    from pygml.app.builders import build_transforms_of
    from pygml.app.evaluate import load_trained

    method, cfg = load_trained(checkpoint)
    _, test_tf = build_transforms_of(cfg.data)
    batch = torch.stack([test_tf(Image.open(p)) for p in images[:5]])
    with torch.no_grad():
        want = method.embed(batch).numpy()
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    extra = {"pygml.json": ""}
    got_onnx = session.run(None, {"images": batch.numpy()})[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        script = torch.jit.load(str(script_file), _extra_files=extra)
    got_script = script(batch).detach().numpy()
    assert got_onnx.shape == got_script.shape == want.shape == (5, 16)
    assert np.abs(got_onnx - want).max() < 1e-4 and np.abs(got_script - want).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["pygml.embedding_dim"] == "16" and "RGB in [0, 1]" in props["pygml.input"]
    assert json.loads(extra["pygml.json"])["pygml.method"] == "baseline"


def test_embed_index_search(folder_run, tmp_path, capsys):
    root, photos, checkpoint = folder_run
    emb = tmp_path / "photos.npy"
    assert run(tools.embed_main, "--checkpoint", checkpoint, "--folder", photos, "--out", emb, "--skip-corrupt",
               "--shard-size", 7, "--no-progress") == 0
    captured = capsys.readouterr()
    assert "embedded 31 images (16-d)" in captured.out
    assert f"skipped 1 of 32 images that are missing or cannot be decoded: {photos / 'c0' / CORRUPT}" in captured.err
    listing = pd.read_csv(tmp_path / "photos.files.csv")
    assert len(listing) == len(np.load(emb)) == 31 and not (tmp_path / "photos.npy.parts").exists()
    assert set(listing["label"]) == {f"c{i}" for i in range(6)} | {SINGLETON}

    index = tmp_path / "photos.faiss"
    assert run(tools.index_main, emb, "--out", index) == 0
    assert f"indexed 31 images (16-d, exact, cosine): {index}, {index}.json" in capsys.readouterr().out

    queries = [next((photos / c).glob(f"img00{i}.*")) for c, i in (("c1", 0), ("c4", 3))]
    out = tmp_path / "search"
    assert run(tools.search_main, "--index", index, "--checkpoint", checkpoint, *queries, "-k", 3, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "rank  similarity  label" in printed
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 6
    for query in queries:  # a query's own image comes back first
        first = results[(results["query"] == str(query)) & (results["rank"] == 1)].iloc[0]
        assert first["path"] == str(query) and first["similarity"] == pytest.approx(1.0, abs=1e-5)
    grid = Image.open(out / "results.png")
    assert grid.size[0] > 4 * 96 and grid.size[1] > 2 * 96
    page = (out / "results.html").read_text()
    assert page.count("<img src=\"data:image/jpeg;base64,") == 8 and queries[0].name in page


def test_parquet_embeddings_and_queries_by_embedding(folder_run, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    root, photos, checkpoint = folder_run
    emb = tmp_path / "photos.parquet"
    manifest = make_manifest(tmp_path, corrupt=False, singleton=False)
    assert run(tools.embed_main, "--checkpoint", checkpoint, "--csv", manifest, "--out", emb, "--no-progress") == 0
    assert run(tools.index_main, emb, "--out", tmp_path / "i.faiss", "--search", "IVF2,Flat", "--nprobe", 2) == 0
    capsys.readouterr()
    assert run(tools.search_main, "--index", tmp_path / "i.faiss", "--embeddings", emb, "-k", 2,
               "--exclude-self") == 0
    printed = capsys.readouterr().out
    blocks = printed.strip().split("\n\n")
    assert len(blocks) == 30
    for block in blocks:  # the query's own row is left out by path
        lines = block.splitlines()
        query = lines[0].split(": ", 1)[1].split("  (label")[0]
        assert all(not line.endswith(query) for line in lines[2:])
        assert "(label " in lines[0] and ("✓" in lines[2] or "✗" in lines[2])


def test_embedding_resumes_from_its_finished_shards(folder_run, tmp_path, monkeypatch, capsys):
    root, photos, checkpoint = folder_run
    images = sorted(p for p in photos.rglob("*") if p.is_file() and p.name != CORRUPT)
    listed = images[:12] + [photos / "c0" / CORRUPT] + images[12:19]
    (tmp_path / "list.txt").write_text("# queries\n" + "\n".join(os.path.relpath(p, tmp_path) for p in listed) + "\n")
    out = tmp_path / "e.npy"
    args = ("--checkpoint", checkpoint, "--list", tmp_path / "list.txt", "--out", out, "--shard-size", 5,
            "--no-progress")
    assert run(tools.embed_main, *args) == 2  # the corrupt image is in the third shard
    assert f"cannot read image {photos / 'c0' / CORRUPT}" in capsys.readouterr().err
    parts = tmp_path / "e.npy.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["plan.json", "shard-00000.npz", "shard-00001.npz"]
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))

    from pygml.app import embedding

    calls = []
    original = embedding.embed_dataset
    monkeypatch.setattr(embedding, "embed_dataset", lambda *a, **k: calls.append(len(a[1])) or original(*a, **k))
    assert run(tools.embed_main, *args, "--skip-corrupt") == 0
    assert calls == [4, 5], "the two finished shards are not embedded again"
    x, listing = np.load(out), pd.read_csv(tmp_path / "e.files.csv")
    assert len(x) == len(listing) == 19 and listing["path"].tolist() == [str(p) for p in images[:19]]
    monkeypatch.undo()
    whole = tmp_path / "whole.npy"
    (tmp_path / "whole-list.txt").write_text("\n".join(str(p) for p in images[:19]))
    assert run(tools.embed_main, "--checkpoint", checkpoint, "--list", tmp_path / "whole-list.txt", "--out", whole,
               "--no-progress") == 0
    assert np.allclose(np.load(whole), x, atol=1e-6), "shards give the embeddings of one pass"

    (parts / "plan.json").parent.mkdir(exist_ok=True)
    (parts / "plan.json").write_text(json.dumps({"format": "pygml-embedding-shards", "images": 3}))
    assert run(tools.embed_main, *args) == 2
    assert "holds shards of another embedding run" in capsys.readouterr().err


def expect_error(capsys, code: int, *needles: str) -> None:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    for needle in needles:
        assert needle in err[-1], err[-1]


def test_bad_inputs_are_clear_errors_and_leave_nothing(folder_run, tmp_path, capsys):
    root, photos, checkpoint = folder_run
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    out = tmp_path / "out"
    out.mkdir()
    image = next((photos / "c2").glob("img000.*"))

    expect_error(capsys, run(tools.embed_main, "--checkpoint", tmp_path / "none.pt", image, "--out", out / "e.npy"),
                 "checkpoint not found", "none.pt")
    expect_error(capsys, run(tools.embed_main, "--checkpoint", foreign, image, "--out", out / "e.npy"),
                 f"{foreign} is not a pygml checkpoint")
    expect_error(capsys, run(tools.embed_main, "--checkpoint", checkpoint, image, "--out", tmp_path / "no" / "e.npy"),
                 f"the folder {tmp_path / 'no'} does not exist")
    expect_error(capsys, run(tools.embed_main, "--checkpoint", checkpoint, image, "--out", out / "e.txt"),
                 ".npy", "e.txt")
    expect_error(capsys, run(tools.embed_main, "--checkpoint", checkpoint, "--out", out / "e.npy"),
                 "give the images one way")
    expect_error(capsys, run(tools.embed_main, "--checkpoint", checkpoint, photos / "c2" / "nope.png", "--out",
                             out / "e.npy"), "1 images do not exist", "nope.png")
    expect_error(capsys, run(tools.embed_main, "--checkpoint", checkpoint, photos / "c0" / CORRUPT, "--out",
                             out / "e.npy", "--no-progress"), "cannot read image", CORRUPT, "--skip-corrupt")
    bad_manifest = tmp_path / "m.csv"
    bad_manifest.write_text("file,class\na.png,1\n")
    expect_error(capsys, run(tools.embed_main, "--checkpoint", checkpoint, "--csv", bad_manifest, "--out",
                             out / "e.npy"), "has no column 'path'", "m.csv")

    expect_error(capsys, run(tools.index_main, out / "missing.npy", "--out", out / "i.faiss"), "missing.npy not found")
    np.save(tmp_path / "alone.npy", np.ones((3, 4), dtype=np.float32))
    expect_error(capsys, run(tools.index_main, tmp_path / "alone.npy", "--out", out / "i.faiss"),
                 "no file list beside them", "alone.files.csv")
    pd.DataFrame({"path": ["a", "b"], "label": ["x", "y"]}).to_csv(tmp_path / "alone.files.csv", index=False)
    expect_error(capsys, run(tools.index_main, tmp_path / "alone.npy", "--out", out / "i.faiss"),
                 "have 3 rows but their file list has 2")
    pd.DataFrame({"path": list("abc"), "label": list("xyz")}).to_csv(tmp_path / "alone.files.csv", index=False)
    expect_error(capsys, run(tools.index_main, tmp_path / "alone.npy", "--out", tmp_path / "no" / "i.faiss"),
                 f"the folder {tmp_path / 'no'} does not exist")
    expect_error(capsys, run(tools.index_main, tmp_path / "alone.npy", "--out", out / "i.faiss", "--search",
                             "IVF64,Flat"), "asks for 64 inverted lists but embeddings has only 3 rows")

    assert run(tools.index_main, tmp_path / "alone.npy", "--out", tmp_path / "four.faiss") == 0
    capsys.readouterr()
    expect_error(capsys, run(tools.search_main, "--index", tmp_path / "four.faiss", "--checkpoint", checkpoint, image),
                 "the queries have 16 dimensions but the index holds 4-dimensional rows")
    expect_error(capsys, run(tools.search_main, "--index", tmp_path / "four.faiss", image), "pass --checkpoint")
    expect_error(capsys, run(tools.search_main, "--index", out / "none.faiss", "--embeddings",
                             tmp_path / "alone.npy"), "none.faiss not found")
    np.save(tmp_path / "other.npy", np.ones((5, 4), dtype=np.float32))
    assert run(tools.index_main, tmp_path / "alone.npy", "--out", tmp_path / "four.faiss", "--search", "HNSW8") == 0
    (tmp_path / "four.faiss.json").write_text((tmp_path / "four.faiss.json").read_text().replace('"sha256": "',
                                                                                                 '"sha256": "0'))
    capsys.readouterr()
    expect_error(capsys, run(tools.search_main, "--index", tmp_path / "four.faiss", "--embeddings",
                             tmp_path / "alone.npy"), "describes another index file", "four.faiss")

    expect_error(capsys, run(tools.export_main, "--checkpoint", checkpoint, "--out", tmp_path / "no" / "m.onnx"),
                 f"the folder {tmp_path / 'no'} does not exist")
    expect_error(capsys, run(tools.export_main, "--checkpoint", checkpoint, "--out", out / "m.zip"),
                 "cannot tell the export format", "m.zip")
    expect_error(capsys, run(tools.export_main, "--checkpoint", foreign, "--out", out / "m.pt"),
                 "is not a pygml checkpoint")
    assert sorted(os.listdir(out)) == [], "nothing half-written is left behind"
