"""Look inside a batch graph with PyG's own tools: degrees, homophily, networkx, subgraphs, and the
attention weights the layers return.

    python examples/inspect_batch_graph.py                                 # an untrained network
    python examples/inspect_batch_graph.py --checkpoint runs/demo/checkpoint.pt --out runs/demo/graph.png

It embeds one P×K batch of the glyphs test classes, builds its graph with ``pygml.graph.batch_graph`` and
prints what a user usually wants to know about it.
"""

from __future__ import annotations

import argparse
from typing import Optional

import networkx as nx
import torch
from torch_geometric.utils import degree, homophily, subgraph, to_networkx

from pygml.app.builders import build_datasets, build_method
from pygml.app.config import load_config
from pygml.data import PKSampler
from pygml.graph import LABEL, VISUAL, batch_graph, edges_of_type
from pygml.nn import SSAConv


def load_batch(checkpoint: Optional[str], classes: int, per_class: int, seed: int = 0):
    """Embeddings and labels of one P×K batch of test images, from a checkpoint or an untrained network."""
    if checkpoint:
        from pygml.app.evaluate import load_trained

        method, cfg = load_trained(checkpoint)
    else:
        cfg = load_config("configs/baseline/glyphs.yaml")
        torch.manual_seed(seed)
        method = build_method(cfg, num_classes=2)
    splits = build_datasets(cfg)
    batch = next(iter(PKSampler(splits.query.labels, classes, per_class, seed=seed)))
    images = torch.stack([splits.query[i][0] for i in batch])
    labels = torch.as_tensor(splits.query.labels[batch])
    method.eval()
    with torch.no_grad():
        return method.embed(images), labels


def inspect(x: torch.Tensor, y: torch.Tensor, k: int = 5) -> dict[str, float]:
    data = batch_graph(x, y, k=k, self_loops=False)
    visual, label = edges_of_type(data, VISUAL), edges_of_type(data, LABEL)
    n = data.num_nodes
    report = {
        "nodes": n,
        "visual (kNN) edges": visual.size(1),
        "label edges": label.size(1),
        "in-degree of the kNN graph (min/max)": f"{int(degree(visual[1], n).min())}/{int(degree(visual[1], n).max())}",
        "out-degree of the kNN graph (max: a hub)": int(degree(visual[0], n).max()),
        "label homophily of the kNN edges": round(homophily(visual, y, method="edge"), 3),
    }
    g = to_networkx(data.edge_subgraph(data.edge_type == VISUAL), to_undirected=True)
    report["connected components of the kNN graph"] = nx.number_connected_components(g)
    first_class = (y == y[0]).nonzero().view(-1)
    sub, _ = subgraph(first_class, visual, num_nodes=n)
    report[f"kNN edges inside class {int(y[0])}"] = sub.size(1)
    # attention weights come back per edge, in edge_index order, like PyG's GATConv / TransformerConv
    same = (y[visual[0]] == y[visual[1]]).float()
    _, (ei, alpha) = SSAConv(x.size(1), parameter_free=True)(x, visual, return_attention_weights=True)
    alpha = alpha.view(ei.size(1), -1).mean(dim=1)
    report["parameter-free SSA: attention mass on same-class neighbours"] = round(float((alpha * same).sum() / alpha.sum()), 3)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a glyphs checkpoint written by train.py")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--out", help="also draw the batch graph to this PNG")
    args = parser.parse_args()
    x, y = load_batch(args.checkpoint, args.classes, args.per_class)
    for key, value in inspect(x, y, args.k).items():
        print(f"{key:58s} {value}")
    if args.out:
        from pygml.app.plots import batch_graph_drawing

        print("drawn:", batch_graph_drawing(batch_graph(x, y, k=args.k), args.out))


if __name__ == "__main__":
    main()
