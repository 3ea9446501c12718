"""pygml.neighbors.knn against brute-force references: a float64 ranking of random rows, a float32 one of
rows with exact ties (the tie rule), and the full similarity matrix computed as pygml.graph computes it
(the same numbers, whatever the block size)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pygml.neighbors
from pygml.checks import value_checks
from pygml.neighbors import knn


def brute_force(query, k, reference=None, metric="cosine", exclude_self=False):
    """(similarities, indices) of the k most similar reference rows from the full float64 matrix, sorted by
    (-similarity, index); a row's own column removed by index."""
    q = query.double().numpy()
    r = q if reference is None else reference.double().numpy()
    if metric == "cosine":
        sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (r / np.linalg.norm(r, axis=1, keepdims=True)).T
    else:
        sim = -((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    order = np.argsort(-sim, axis=1, kind="stable")
    if exclude_self:
        order = order[order != np.arange(len(q))[:, None]].reshape(len(q), -1)
    order = order[:, :k]
    return np.take_along_axis(sim, order, axis=1), order


def tied_rows(rng, n, n_base=12):
    """Rows drawn with repetition from a few unit vectors with entries 0 or ±1/2 (4 non-zeros): cosine
    similarities and squared distances are exact in float32, so equal rows and equal angles tie exactly."""
    base = np.zeros((n_base, 16), np.float32)
    for row in base:
        row[rng.choice(16, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return torch.from_numpy(base[rng.integers(0, n_base, n)])


def graph_similarity(query, reference, metric):
    """The full similarity matrix as pygml.graph.similarity and the k-reciprocal search compute it."""
    if metric == "cosine":
        return F.normalize(query, dim=1) @ F.normalize(reference, dim=1).t()
    return -torch.cdist(query, reference).pow(2)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("within, exclude_self", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("chunk_size", [None, 7, 1])
def test_random_rows_match_the_float64_ranking(metric, within, exclude_self, chunk_size):
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(60, 8, generator=gen)
    reference = None if within else torch.randn(45, 8, generator=gen)
    for k in (1, 5, 44):
        values, indices = knn(query, k, reference, metric=metric, exclude_self=exclude_self, chunk_size=chunk_size)
        want_values, want_indices = brute_force(query, k, reference, metric, exclude_self)
        assert values.shape == indices.shape == (60, k) and indices.dtype == torch.long
        np.testing.assert_array_equal(indices.numpy(), want_indices)
        np.testing.assert_allclose(values.numpy(), want_values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("within, exclude_self", [(True, True), (True, False), (False, False)])
def test_exact_ties_put_the_smaller_index_first(metric, within, exclude_self):
    """Many rows are equal, so ties fill the lists and cross the k-th place: the answer is the stable
    sort's, for every k and block size."""
    rng = np.random.default_rng(1)
    query = tied_rows(rng, 90)
    reference = None if within else tied_rows(rng, 70)
    m = 90 if within else 70
    for k in (1, 2, 3, 8, 20, m - int(exclude_self)):
        want_values, want_indices = brute_force(query, k, reference, metric, exclude_self)
        for chunk_size in (None, 16, 1):
            values, indices = knn(query, k, reference, metric=metric, exclude_self=exclude_self,
                                  chunk_size=chunk_size)
            np.testing.assert_array_equal(indices.numpy(), want_indices, err_msg=f"k={k}, chunk_size={chunk_size}")
            np.testing.assert_allclose(values.numpy(), want_values, atol=1e-6)


def test_integer_rows_tie_in_euclidean_distance():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.integers(-2, 3, size=(120, 3)).astype(np.float32))
    for k in (1, 6, 30):
        _, indices = knn(x, k, metric="euclidean", exclude_self=True, chunk_size=50)
        np.testing.assert_array_equal(indices.numpy(), brute_force(x, k, metric="euclidean", exclude_self=True)[1])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("n", [20, 300])  # torch.cdist computes directly up to 25 rows, by a product beyond
def test_the_numbers_of_the_full_matrix(metric, n):
    """In one block (the default for a batch) the similarities are the entries of the full matrix computed
    as pygml.graph computes it, bit for bit, and the indices its stable sort with the diagonal left out
    (the batch graph's visual kNN and the k-reciprocal search). Smaller blocks agree up to the last bit
    of the matrix product, whose kernel BLAS chooses by the block's shape."""
    x = torch.randn(n, 12, generator=torch.Generator().manual_seed(3))
    full = graph_similarity(x, x, metric)
    full.fill_diagonal_(-float("inf"))
    k = min(n - 1, 10)
    want = torch.sort(full, dim=1, descending=True, stable=True).indices[:, :k]
    values, indices = knn(x, k, metric=metric, exclude_self=True)
    assert torch.equal(indices, want)
    assert torch.equal(values, full.gather(1, want))
    for chunk_size in (64, 5, 1):
        values, indices = knn(x, k, metric=metric, exclude_self=True, chunk_size=chunk_size)
        assert torch.equal(indices, want)
        torch.testing.assert_close(values, full.gather(1, want), rtol=1e-6, atol=1e-6)


def test_own_row_is_removed_by_index_not_by_rank():
    # five equal rows: row 4's own index is not among the first k + 1 of the tie, so its list is rows 0, 1
    x = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]])
    _, indices = knn(x, 2, exclude_self=True)
    assert indices.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1], [0, 1]]
    _, indices = knn(x, 2)  # without exclude_self a row may be its own neighbour
    assert indices.tolist() == [[0, 1]] * 5 + [[5, 0]]


def test_a_zero_row_has_cosine_similarity_zero():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-2.0, 0.0]])
    values, indices = knn(x, 2, exclude_self=True)
    assert indices.tolist() == [[1, 2], [0, 2], [0, 1]]
    assert values.tolist() == [[0.0, 0.0], [0.0, -1.0], [0.0, -1.0]]


def test_dtype_default_blocks_and_no_gradient(monkeypatch):
    x = torch.randn(50, 4, dtype=torch.float64, requires_grad=True)
    values, indices = knn(x, 3, exclude_self=True)
    assert values.dtype == torch.float64 and not values.requires_grad
    monkeypatch.setattr(pygml.neighbors, "CHUNK_BYTES", 50 * 8 * 3)  # three rows a block
    small_values, small_indices = knn(x, 3, exclude_self=True)
    assert torch.equal(small_indices, indices)
    torch.testing.assert_close(small_values, values)
    empty_values, empty_indices = knn(x[:0], 3, x)
    assert empty_values.shape == empty_indices.shape == (0, 3)


@pytest.mark.cuda
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_cuda_gives_the_cpu_answer_on_ties(metric):
    query = tied_rows(np.random.default_rng(4), 500)
    cpu = knn(query, 25, metric=metric, exclude_self=True, chunk_size=64)
    cuda = knn(query.cuda(), 25, metric=metric, exclude_self=True, chunk_size=64)
    assert torch.equal(cuda[1].cpu(), cpu[1])
    assert torch.allclose(cuda[0].cpu(), cpu[0], atol=1e-6)


@pytest.mark.parametrize("call, error, match", [
    (lambda x: knn(x, 0), ValueError, r"k must be an int in \[1, 10\] for 10 rows searched within themselves"),
    (lambda x: knn(x, 10, exclude_self=True), ValueError, r"\[1, 9\] .* each row's own index excluded; got 10"),
    (lambda x: knn(x, 6, x[:5]), ValueError, r"k must be an int in \[1, 5\] for 5 reference rows; got 6"),
    (lambda x: knn(x, True), ValueError, "k must be an int"),
    (lambda x: knn(x, 2.0), ValueError, "k must be an int"),
    (lambda x: knn(x[:1], 1, exclude_self=True), ValueError, r"\[1, 0\] for 1 rows"),
    (lambda x: knn(x[0], 1), ValueError, r"query must be 2-D \(rows, dimensions\), got shape \(3,\)"),
    (lambda x: knn(x, 1, x[:, :2]), ValueError, "query has 3 columns but reference has 2"),
    (lambda x: knn(x, 1, x.double()), ValueError, "query is torch.float32 on cpu but reference is torch.float64"),
    (lambda x: knn(x.long(), 1), ValueError, "query must be a floating-point tensor"),
    (lambda x: knn(x, 1, metric="dot"), ValueError, "metric must be one of"),
    (lambda x: knn(x, 1, x, exclude_self=True), ValueError, "exclude_self=True .* needs reference=None"),
    (lambda x: knn(x, 1, chunk_size=0), ValueError, "chunk_size must be a positive"),
    (lambda x: knn(x.numpy(), 1), TypeError, "query must be a torch.Tensor"),
])
def test_bad_arguments_are_errors_naming_them(call, error, match):
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(5))
    with pytest.raises(error, match=match):
        call(x)


def test_nan_is_an_error_when_value_checks_are_on():
    x = torch.randn(10, 3)
    x[7, 1] = float("nan")
    with value_checks():
        with pytest.raises(ValueError, match="reference has NaN or inf values \\(first in row 7\\)"):
            knn(x[:3], 2, x)
    with value_checks(False):
        assert knn(x, 2)[1].shape == (10, 2)  # not read: an unspecified answer, no error


def test_exclude_leaves_out_given_reference_rows_by_index():
    """Some query rows searched against the whole set, each without its own row: the same lists as the
    whole set searched within itself, duplicates included."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=g)
    x[7] = x[3]  # a duplicate: its own row must go, not its twin
    picks = torch.tensor([3, 7, 0, 39])
    values, indices = knn(x[picks], 5, x, exclude=picks)
    all_values, all_indices = knn(x, 5, exclude_self=True)
    torch.testing.assert_close(values, all_values[picks])
    assert torch.equal(indices, all_indices[picks])
    assert 7 in indices[0].tolist() and 3 not in indices[0].tolist()
    with pytest.raises(ValueError, match="exclude names rows of a reference"):
        knn(x, 5, exclude=picks)
    with pytest.raises(ValueError, match=r"exclude must be int64 of shape \(4,\)"):
        knn(x[picks], 5, x, exclude=picks[:2])
