"""The evaluator's inputs: tensors and arrays of any float dtype give the same numbers; bad inputs and
settings are ValueErrors naming the argument."""

import numpy as np
import pytest
import torch

from pygml.evaluation import RetrievalEvaluator, evaluate


def test_input_types_and_dtypes_agree():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 12)).astype(np.float16).astype(np.float32)
    y = rng.integers(0, 20, 200)
    kw = dict(recall_at=(1, 4), nmi=True, seed=3)
    expected = evaluate(x, y, **kw)
    for rows, labels in [(torch.from_numpy(x), torch.from_numpy(y)), (x.astype(np.float64), y.astype(np.int32)),
                         (x.astype(np.float16), y), (torch.from_numpy(x).double(), list(y))]:
        assert evaluate(rows, labels, **kw) == expected


@pytest.mark.parametrize("call, match", [
    (lambda x, y: evaluate(x, y[:-1]), "query_labels has 9 entries but its embeddings have 10 rows"),
    (lambda x, y: evaluate(x, y, x[:4], y[:5]), "reference_labels has 5 entries"),
    (lambda x, y: evaluate(np.where(np.eye(10, 4) > 0, np.nan, x), y), "query has NaN or inf"),
    (lambda x, y: evaluate(x, y, np.full((3, 4), np.inf), y[:3]), "reference has NaN or inf"),
    (lambda x, y: evaluate(torch.tensor([[1.0, 2.0]], dtype=torch.float64) * 1e300, y[:1]), "NaN or inf"),
    (lambda x, y: evaluate(x[:0], y[:0]), "query is empty"),
    (lambda x, y: evaluate(x, y, x[:0], y[:0]), "reference is empty"),
    (lambda x, y: evaluate(x[:, :0], y), "query is empty"),
    (lambda x, y: evaluate(x, y, recall_at=(1, 10)), "K=10 but the gallery has only 9 rows"),
    (lambda x, y: evaluate(x, y, x[:3], y[:3], recall_at=(4,)), "K=4 but the gallery has only 3 rows"),
    (lambda x, y: evaluate(x[:, 0], y), "query must be 2-D"),
    (lambda x, y: evaluate(x, y, x[:, :3], y), "query has 4 dimensions but reference has 3"),
    (lambda x, y: evaluate(x, y, metric="manhattan"), "metric must be one of"),
    (lambda x, y: evaluate(x, y, x), "without reference_labels"),
    (lambda x, y: evaluate(x, y, reference_labels=y), "without reference"),
    (lambda x, y: evaluate(x, y.astype(float)), "query_labels must hold integer"),
    (lambda x, y: evaluate(x, y[:, None]), "query_labels must be 1-D"),
    (lambda x, y: evaluate(x.astype(int), y), "query must hold floating-point"),
    (lambda x, y: evaluate(x.tolist(), y), "query must be a torch.Tensor or numpy.ndarray"),
    (lambda x, y: evaluate(np.zeros((10, 4)), y), "query row 0 is all zeros"),
    (lambda x, y: evaluate(x[:1], y[:1]), "leave-one-out needs at least 2 rows"),
    (lambda x, y: evaluate(x, y, recall_at=(0, 1)), "recall_at must hold positive integers"),
    (lambda x, y: evaluate(x, y, chunk_size=0), "chunk_size must be a positive"),
    (lambda x, y: RetrievalEvaluator(metric="dot"), "metric must be one of"),
])
def test_bad_input_is_an_error_naming_it(call, match):
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((10, 4)), rng.integers(0, 3, 10)
    with pytest.raises(ValueError, match=match):
        call(x, y)
