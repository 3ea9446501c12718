"""The attention layers and the BGFormer block on any batch graph (random shapes, dtypes, label patterns,
fixed budget): finite outputs of the input's shape and attention weights that sum as they should, or a
ValueError naming the argument."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pygml.checks import value_checks
from pygml.graph import VISUAL, batch_graph, edges_of_type
from pygml.nn import BGFormerBlock, IntraBatchAttention, SSAConv

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw, max_n=12, max_classes=3):
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, 6))
    pattern = draw(st.sampled_from(["one class", "all distinct", "random"]))
    if pattern == "one class":
        y = [0] * n
    elif pattern == "all distinct":
        y = list(range(n))
    else:
        y = draw(st.lists(st.integers(0, max_classes), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x, torch.tensor(y, dtype=torch.long)


@SETTINGS
@given(batches(), st.one_of(st.none(), st.integers(1, 15)))
def test_layers_on_any_batch_graph(batch, k):
    x, y = batch
    x = x.float()
    channels = 4
    h = torch.nn.functional.pad(x, (0, max(channels - x.size(1), 0)))[:, :channels]
    g = batch_graph(h, y, k=k)
    vis = edges_of_type(g, VISUAL)
    torch.manual_seed(0)
    for layer in (IntraBatchAttention(channels, heads=2, dropout=0.0), SSAConv(channels, heads=2)):
        out, (ei, alpha) = layer(h, vis, return_attention_weights=True)
        assert out.shape == h.shape and torch.isfinite(out).all()
        sums = torch.zeros(h.size(0), 2).index_add_(0, ei[1], alpha)
        if isinstance(layer, SSAConv):
            assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
        else:
            assert bool((sums < 1).all())
    block = BGFormerBlock(channels, heads=2)
    assert torch.isfinite(block(g)).all()


def test_layers_reject_bad_shapes():
    for layer in (IntraBatchAttention(4, heads=2), SSAConv(4, heads=2)):
        with pytest.raises(ValueError, match="x"):
            layer(torch.randn(3, 5), torch.tensor([[0], [1]]))
        with pytest.raises(ValueError, match="edge_index"):
            layer(torch.randn(3, 4), torch.tensor([[0, 1, 2]]))
        with value_checks(), pytest.raises(ValueError, match="edge_index"):  # an index range: a value check
            layer(torch.randn(3, 4), torch.tensor([[0], [7]]))
