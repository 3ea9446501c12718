"""A pygml method in a training loop of your own: no config, no pygml trainer.

    python examples/plain_training_loop.py

Intra-Batch Connections on scikit-learn's digits (train on 0-4, retrieve the unseen 5-9). Swap the method
for ``BGFormer(backbone, num_classes, heads=4, k=8, loss=MultiSimilarityLoss())`` with any
pytorch-metric-learning loss, or for ``ProxyGML`` / ``Baseline``: the loop stays the same.
"""

import torch
from torch.utils.data import DataLoader

from pygml.data import Digits, PKSampler, build_transforms
from pygml.evaluation import evaluate
from pygml.inference import embed_dataset
from pygml.methods import IntraBatch
from pygml.models import SmallCNN


def retrieval(method, dataset):
    """MAP@R and Recall@1 of the method's embeddings of ``dataset`` (leave-one-out)."""
    metrics = evaluate(*embed_dataset(method.embed, dataset, model=method, progress=False), recall_at=(1,), nmi=False)
    return {"MAP@R": metrics["mean_average_precision_at_r"], "R@1": metrics["recall@1"]}


def main(epochs: int = 4, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    train_tf, test_tf = build_transforms("small", image_size=16)
    train, test = Digits("train", train_tf), Digits("test", test_tf)
    method = IntraBatch(SmallCNN(width=8), num_classes=train.num_classes, embedding_dim=32, heads=2)
    optimizer = torch.optim.Adam([{"params": g["params"]} for g in method.param_groups()], lr=2e-3)
    loader = DataLoader(train, batch_sampler=PKSampler(train.labels, 5, 8, seed=seed))
    before = retrieval(method, test)
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        method.train()
        for images, labels in loader:
            loss, logs = method(images, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {"before": before, "after": retrieval(method, test)}


if __name__ == "__main__":
    result = main()
    print(f"unseen digits, before training: {result['before']}\n                after training:  {result['after']}")
