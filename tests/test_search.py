"""pygml.search: a faiss index of stored embeddings, saved with its rows' paths and labels, loaded and queried."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from pygml.search import build_search_index, description_path, load_index, save_index, search


def gallery(n: int = 40, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_against_a_dense_reference():
    x = gallery()
    index = build_search_index(x, [f"img{i}.png" for i in range(40)], [str(i % 4) for i in range(40)])
    queries = gallery(5, seed=1)
    scores, ids = search(index, queries, 6)
    sims = queries @ x.T
    want = np.argsort(-sims, axis=1, kind="stable")[:, :6]
    assert np.array_equal(ids, want) and np.allclose(scores, np.take_along_axis(sims, want, axis=1), atol=1e-6)
    assert index.score_name == "similarity" and index.dim == 8 and len(index) == 40


def test_own_rows_are_excluded_by_index_even_among_duplicates():
    x = gallery(6)
    x[3] = x[2]  # a duplicate: rank 0 is not always the query itself
    index = build_search_index(x, list("abcdef"))
    scores, ids = search(index, x, 2, exclude=np.arange(6))
    assert all(q not in row for q, row in enumerate(ids))
    assert ids[2, 0] == 3 and ids[3, 0] == 2
    with pytest.raises(ValueError, match="k must be between 1 and 5"):
        search(index, x, 6, exclude=np.arange(6))


def test_euclidean_scores_are_squared_distances_nearest_first():
    x = gallery() * 3
    index = build_search_index(x, [str(i) for i in range(40)], metric="euclidean")
    scores, ids = search(index, x[:3], 2)
    assert index.score_name == "distance²" and np.array_equal(ids[:, 0], np.arange(3))
    assert np.allclose(scores[:, 0], 0, atol=1e-4) and (scores[:, 1] >= scores[:, 0]).all()


def test_save_and_load_keep_everything_and_refuse_a_foreign_description(tmp_path):
    x = gallery(300, 16)
    index = build_search_index(x, [f"p{i}" for i in range(300)], [None] * 300, search="IVF4,Flat", nprobe=4)
    path = save_index(index, tmp_path / "g.faiss")
    assert faiss.read_index(str(path)).ntotal == 300, "a plain faiss file"
    loaded = load_index(path)
    assert loaded.paths == index.paths and loaded.labels == [None] * 300 and loaded.search == "IVF4,Flat"
    assert faiss.extract_index_ivf(loaded.index).nprobe == 4
    assert np.array_equal(search(loaded, x[:4], 3)[1], search(index, x[:4], 3)[1])
    with pytest.raises(ValueError, match="the queries have 8 dimensions but the index holds 16-dimensional rows"):
        search(loaded, gallery(2), 1)
    other = build_search_index(gallery(5, 16), list("abcde"))
    faiss.write_index(other.index, str(path))  # the index rewritten without its description
    with pytest.raises(ValueError, match="describes another index file"):
        load_index(path)
    description_path(path).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a pygml index description"):
        load_index(path)
    description_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="has no description"):
        load_index(path)
    with pytest.raises(FileNotFoundError, match="build one with pygml-index"):
        load_index(tmp_path / "none.faiss")


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
    index = build_search_index(gallery(), [str(i) for i in range(40)])

    def broken(*_):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_index(index, tmp_path / "g.faiss")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        save_index(index, tmp_path / "missing" / "g.faiss")


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="3 embeddings need as many paths and labels; got 2 paths"):
        build_search_index(gallery(3), ["a", "b"])
    with pytest.raises(ValueError, match="is not a faiss index factory string"):
        build_search_index(gallery(3), list("abc"), search="NoSuchIndex")
    with pytest.raises(ValueError, match="embeddings must be a non-empty"):
        build_search_index(np.zeros((0, 4), dtype=np.float32), [])
