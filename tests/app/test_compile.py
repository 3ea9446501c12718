"""torch.compile: the graph layers give the eager numbers on batch graphs of changing size built outside
the compiled region, and ``train.compile`` trains a compiled backbone to the eager weights. The layers
are traced by TorchDynamo and AOTAutograd (the ``aot_eager`` backend: the capture, where graph code
breaks, without the minutes of C++ code generation on a CPU); the engine's test compiles a backbone
with the default inductor backend."""

import pytest
import torch

from pygml.app.checkpoint import load_checkpoint
from pygml.app.engine import train
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


def test_compiled_backbone_trains_as_the_eager_one(tmp_path, tiny_config):
    """train.compile: same weights as eager (to float tolerance), same state-dict keys, and a checkpoint
    that loads into an eager model."""
    eager = train(tiny_config("train.epochs=1", "train.max_steps_per_epoch=2", out_dir=tmp_path / "eager"))
    compiled = train(tiny_config("train.epochs=1", "train.max_steps_per_epoch=2", "train.compile=true",
                                 out_dir=tmp_path / "compiled"))
    a = load_checkpoint(tmp_path / "eager" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "compiled" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4, rtol=1e-3), key
    assert compiled["test"]["recall@1"] == pytest.approx(eager["test"]["recall@1"], abs=0.02)
