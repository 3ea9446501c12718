"""pygml.app.evaluate: devices, embedding a split, the kNN homophily of batches, and evaluating a stored
checkpoint."""

import json

import pytest
import torch

from pygml.app.checkpoint import load_checkpoint
from pygml.app.engine import train
from pygml.app.evaluate import batch_homophily, embed_split, evaluate_checkpoint, load_trained, select_device
from pygml.methods import Baseline
from pygml.models import SmallCNN


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:1' asked for, but CUDA is not available"):
            select_device("cuda:1")


def test_embed_split_is_the_normalised_test_embedding(tensor_images):
    torch.manual_seed(0)
    method = Baseline(SmallCNN(width=4), num_classes=3, embedding_dim=8).train()
    data = tensor_images(10)
    emb, labels = embed_split(method, data, batch_size=3, progress=False)
    assert method.training
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(emb, method.embed(data.images))
    assert labels.tolist() == [i % 5 for i in range(10)]
    feats, _ = embed_split(method, data, batch_size=3, progress=False, fn=method.features)
    torch.testing.assert_close(torch.nn.functional.normalize(feats, dim=1), emb)
    alone, _ = embed_split(method, data, batch_size=3, progress=False, sharded=True)  # no process group: all rows
    torch.testing.assert_close(alone, emb)


def test_batch_homophily():
    centres = torch.eye(4) * 10
    labels = torch.arange(40) % 4
    tight = centres[labels] + 0.01 * torch.randn(40, 4)
    assert batch_homophily(tight, labels, classes_per_batch=4, samples_per_class=3) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(40, 4, generator=g)
    assert batch_homophily(noise, labels, 4, 3) < 0.7
    assert batch_homophily(noise, labels, 4, 3, seed=1) != batch_homophily(noise, labels, 4, 3, seed=2)


def test_load_trained_and_evaluate_checkpoint(tmp_path, tiny_config):
    result = train(tiny_config("train.epochs=1", "train.max_steps_per_epoch=2"))
    method, cfg = load_trained(tmp_path / "checkpoint.pt", ["eval.recall_at=[1]"])
    assert isinstance(method, Baseline) and not method.training and cfg.eval.recall_at == [1]
    stored = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(torch.equal(v, stored[k]) for k, v in method.state_dict().items())
    evaluated = evaluate_checkpoint(tmp_path / "checkpoint.pt", device="cpu")
    assert (evaluated["method"], evaluated["data"]) == ("baseline", "digits")
    assert evaluated["metrics"]["test"] == pytest.approx(result["test"], abs=1e-6)
    assert evaluated["metrics"]["test"] == pytest.approx(json.loads((tmp_path / "metrics.json").read_text())["test"],
                                                         abs=1e-6)
