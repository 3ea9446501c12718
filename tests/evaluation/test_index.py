"""Approximate search through a faiss index: an exhaustive index ranks as the exact evaluator does, an
IVF index loses little, a built index is reused as it is, bad settings are errors naming them."""


import faiss
import numpy as np
import pytest

from pygml.evaluation import build_index, evaluate
from pygml.evaluation.index import _without_self


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_exhaustive_index_equals_exact_search(metric, leave_one_out, random_set):
    """'Flat' (an exhaustive index), and IVF visiting every list, rank as the exact evaluator does."""
    rng = np.random.default_rng(20)
    x, y = random_set(rng, 400, 8, 30)
    args = (x, y) if leave_one_out else (x[:100], y[:100], x[100:], y[100:])
    exact = evaluate(*args, recall_at=(1, 5, 20), metric=metric, nmi=False)
    for search, nprobe in (("Flat", 1), ("IVF8,Flat", 8)):
        approx = evaluate(*args, recall_at=(1, 5, 20), metric=metric, nmi=False, search=search, nprobe=nprobe)
        assert approx.keys() == exact.keys()
        for key in exact:
            assert approx[key] == pytest.approx(exact[key], abs=1e-12), (search, key)


def test_ivf_loses_little_recall_on_clustered_rows_and_visits_fewer_lists(clustered_set):
    rng = np.random.default_rng(21)
    x, y = clustered_set(rng, n_classes=150, per_class=10, dim=32, noise=0.45)
    exact = evaluate(x, y, recall_at=(1, 10), nmi=False)
    one_list = evaluate(x, y, recall_at=(1, 10), nmi=False, search="IVF32,Flat", nprobe=1)
    several = evaluate(x, y, recall_at=(1, 10), nmi=False, search="IVF32,Flat", nprobe=4)
    assert exact["recall@1"] > 0.9
    assert exact["recall@1"] - several["recall@1"] < 0.02
    assert exact["recall@10"] - several["recall@10"] < 0.02
    # one list of 32 must miss neighbours that lie across a list boundary: the search is really approximate
    assert one_list["mean_average_precision_at_r"] < several["mean_average_precision_at_r"] \
        <= exact["mean_average_precision_at_r"] + 1e-9


def test_compressed_index_and_memory_mapped_gallery(tmp_path, clustered_set):
    """A PQ index over a gallery read from a memory-mapped file gives what the in-memory gallery gives."""
    rng = np.random.default_rng(22)
    x, y = clustered_set(rng, n_classes=100, per_class=6, dim=32, noise=0.3)
    path = tmp_path / "gallery.npy"
    np.save(path, x[100:])
    gallery = np.load(path, mmap_mode="r")
    kw = dict(recall_at=(1, 4), nmi=False, search="IVF4,PQ8", nprobe=4)
    mapped = evaluate(x[:100], y[:100], gallery, y[100:], **kw)
    in_memory = evaluate(x[:100], y[:100], x[100:], y[100:], **kw)
    assert mapped == in_memory
    exact = evaluate(x[:100], y[:100], x[100:], y[100:], recall_at=(1, 4), nmi=False)
    assert exact["recall@1"] > 0.9 and exact["recall@1"] - mapped["recall@1"] < 0.05


def test_a_zero_row_in_the_training_sample_is_named_by_its_row_of_the_gallery():
    x = np.random.default_rng(26).standard_normal((20_000, 4)).astype(np.float32)
    x[15_000:] = 0.0  # the seeded training sample (16,384 of 20,000 rows) holds some of them
    with pytest.raises(ValueError, match=r"reference row 15\d{3} is all zeros"):
        build_index(x, "IVF4,Flat")


def test_without_self_drops_the_query_or_the_last_column():
    ids = np.array([[3, 0, 7], [5, 2, 9], [4, 4 - 4, 1]])
    out = _without_self(ids, np.array([0, 1, 4]))
    assert out.tolist() == [[3, 7], [5, 2], [0, 1]]


def test_build_index_settings_and_nprobe(clustered_set):
    rng = np.random.default_rng(23)
    x, _ = clustered_set(rng, n_classes=40, per_class=10, dim=16)
    index = build_index(x, "IVF16,Flat", nprobe=5)
    assert index.ntotal == len(x) and faiss.extract_index_ivf(index).nprobe == 5
    index = build_index(x, "IVF16,Flat", nprobe=100)  # capped at the number of lists
    assert faiss.extract_index_ivf(index).nprobe == 16
    # cosine rows are normalised: the best match of a row is itself with similarity 1
    sims, ids = build_index(x, "Flat").search(np.ascontiguousarray(x[:5] / np.linalg.norm(x[:5], axis=1)[:, None]), 1)
    assert ids.ravel().tolist() == [0, 1, 2, 3, 4] and np.allclose(sims, 1.0, atol=1e-5)


def test_a_built_index_is_reused_as_it_is(clustered_set):
    rng = np.random.default_rng(25)
    x, y = clustered_set(rng, n_classes=50, per_class=8, dim=16, noise=0.5)
    q, qy, g, gy = x[:80], y[:80], x[80:], y[80:]
    index = build_index(g, "IVF8,Flat", nprobe=2)
    assert evaluate(q, qy, g, gy, nmi=False, search=index) == evaluate(q, qy, g, gy, nmi=False, search="IVF8,Flat",
                                                                      nprobe=2)
    faiss.extract_index_ivf(index).nprobe = 8  # every list: exact
    assert evaluate(q, qy, g, gy, nmi=False, search=index) == pytest.approx(evaluate(q, qy, g, gy, nmi=False))
    with pytest.raises(ValueError, match="holding 320 rows but reference has 319"):
        evaluate(q, qy, g[:-1], gy[:-1], search=index)
    with pytest.raises(ValueError, match="the other metric"):
        evaluate(q, qy, g, gy, search=index, metric="euclidean")
    with pytest.raises(ValueError, match="16-dimensional rows but reference has 15"):
        evaluate(q[:, :15], qy, g[:, :15], gy, search=index)


@pytest.mark.parametrize("call, match", [
    (lambda x, y: evaluate(x, y, search="IVF4096,Flat"), "asks for 4096 inverted lists but query has only 40 rows"),
    (lambda x, y: evaluate(x, y, search="NotAnIndex"), "search='NotAnIndex' is not a faiss index factory string"),
    (lambda x, y: evaluate(x, y, search="IVF4,PQ3"), "multiple of the number of subquantizers"),
    (lambda x, y: evaluate(x, y, search=""), "search must be 'exact' or a faiss index factory string"),
    (lambda x, y: evaluate(x, y, search="IVF4,Flat", nprobe=0), "nprobe must be a positive"),
    (lambda x, y: evaluate(x * (np.arange(40) != 0)[:, None], y, search="Flat"), "query row 0 is all zeros"),
    (lambda x, y: build_index(np.vstack([x, np.zeros((1, 8))]), "Flat"), "reference row 40 is all zeros"),
    (lambda x, y: evaluate(np.where(np.eye(40, 8) > 0, np.nan, x), y, search="Flat"), "query has NaN or inf"),
])
def test_bad_approximate_settings_are_errors_naming_them(call, match):
    rng = np.random.default_rng(24)
    x, y = rng.standard_normal((40, 8)), rng.integers(0, 4, 40)
    with pytest.raises(ValueError, match=match):
        call(x, y)
