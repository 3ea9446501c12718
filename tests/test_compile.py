"""The graph layers under torch.compile: the same numbers as eager, on batch graphs of changing size
built outside the compiled region. The layers are traced by TorchDynamo and AOTAutograd (the
``aot_eager`` backend: the capture, where graph code breaks, without the minutes of C++ code generation
on a CPU); the engine's test compiles a backbone with the default inductor backend."""

import pytest
import torch

from pygml.graph import VISUAL, batch_graph, edges_of_type
from pygml.nn import IntraBatchAttention, SSAConv

pytest.importorskip("torch._inductor")


@pytest.mark.parametrize("make, kernel", [
    (lambda: IntraBatchAttention(16, heads=2, kernel="sparse"), "sparse"),
    (lambda: IntraBatchAttention(16, heads=2, kernel="dense"), "dense"),
    (lambda: SSAConv(16, heads=2, kernel="sparse"), "sparse"),
])
def test_layers_compile_and_match_eager_on_graphs_of_several_sizes(make, kernel):
    torch.manual_seed(0)
    layer = make().eval()
    compiled = torch.compile(layer, dynamic=True, backend="aot_eager")
    for n in (12, 20):
        x = torch.randn(n, 16)
        y = torch.arange(n) % 4
        edge_index = edges_of_type(batch_graph(x, y, k=3), VISUAL)
        x.requires_grad_(True)
        eager_out = layer(x, edge_index)
        (eager_grad,) = torch.autograd.grad(eager_out.square().sum(), x)
        compiled_out = compiled(x, edge_index)
        (compiled_grad,) = torch.autograd.grad(compiled_out.square().sum(), x)
        assert torch.allclose(compiled_out, eager_out, atol=1e-5), (kernel, n)
        assert torch.allclose(compiled_grad, eager_grad, atol=1e-4), (kernel, n)
