"""pygml's layers in an ordinary GNN, on a graph that is not a batch: node classification on Zachary's
karate club (shipped inside PyG, no download).

Each model is ``Linear -> layer -> ReLU -> layer -> Linear`` with one of pygml's layers; the same model
without any graph layer (an MLP) is the reference: with one-hot node features it cannot tell unseen nodes
apart, so whatever the GNNs get above it comes from the graph.

    python examples/reuse_layers.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.datasets import KarateClub
from torch_geometric.utils import add_self_loops

from pygml.nn import BGFormerBlock, IntraBatchAttention, SemanticPropagation, SSAConv


class GNN(nn.Module):
    def __init__(self, layer: str, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.inp = nn.Linear(in_channels, channels)
        self.kind = layer
        make = {
            "IntraBatchAttention": lambda: IntraBatchAttention(channels, heads=2, dropout=0.0),
            "SSAConv": lambda: SSAConv(channels, heads=2),
            "SemanticPropagation": lambda: SemanticPropagation(channels),
            "BGFormerBlock": lambda: BGFormerBlock(channels, heads=2, mix=0.5),
            "MLP (no graph)": lambda: None,
        }[layer]
        self.layers = nn.ModuleList([m for m in (make(), make()) if m is not None])
        self.out = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.layers:
            # BGFormerBlock takes two relations; here the club's friendships serve as both
            h = layer(h, edge_index, edge_index) if isinstance(layer, BGFormerBlock) else layer(h, edge_index)
            h = F.relu(h)
        return self.out(h)


LAYERS = ("IntraBatchAttention", "SSAConv", "SemanticPropagation", "BGFormerBlock", "MLP (no graph)")


def run(layer: str, epochs: int = 200, seed: int = 0) -> dict[str, float]:
    """Train on the four labelled nodes (one per community), return accuracy on the other 30."""
    torch.manual_seed(seed)
    data = KarateClub()[0]
    edge_index, _ = add_self_loops(data.edge_index, num_nodes=data.num_nodes)
    model = GNN(layer, data.num_features, 16, int(data.y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    for _ in range(epochs):
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(data.x, edge_index)[data.train_mask], data.y[data.train_mask])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(data.x, edge_index).argmax(dim=1)
    test = ~data.train_mask
    return {"loss": float(loss.detach()), "test_accuracy": float((pred[test] == data.y[test]).float().mean())}


def main() -> None:
    print(f"{'layer':22s} {'test accuracy':>14s}")
    for layer in LAYERS:
        print(f"{layer:22s} {100 * run(layer)['test_accuracy']:13.1f}%")


if __name__ == "__main__":
    main()
