"""pygml.inference.embed_dataset: rows in dataset order, the model's mode restored, the global RNG untouched."""

import numpy as np
import pytest
import torch

from pygml.inference import embed_dataset


def test_rows_and_labels_in_order_in_batches(tensor_images):
    data = tensor_images(11, classes=3)
    weight = torch.randn(3 * 16 * 16, 4)
    emb, labels = embed_dataset(lambda x: x.flatten(1) @ weight, data, batch_size=4, progress=False)
    assert emb.shape == (11, 4) and emb.dtype == torch.float32 and labels.dtype == torch.long
    torch.testing.assert_close(emb, data.images.flatten(1) @ weight)
    assert labels.tolist() == (np.arange(11) % 3).tolist()


def test_the_model_is_in_eval_mode_during_the_pass_and_restored(tensor_images):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4), torch.nn.Dropout(0.5)).train()
    modes = []

    def fn(x):
        modes.append(model.training)
        return model(x)

    emb, _ = embed_dataset(fn, tensor_images(6), batch_size=4, progress=False, model=model)
    assert modes == [False, False] and model.training
    again, _ = embed_dataset(fn, tensor_images(6), batch_size=4, progress=False, model=model)
    torch.testing.assert_close(emb, again)  # no dropout: eval mode
    model.eval()
    embed_dataset(fn, tensor_images(6), batch_size=4, progress=False, model=model)
    assert not model.training


def test_embedding_leaves_the_global_rng_alone(tensor_images):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    embed_dataset(lambda x: x.mean(dim=(2, 3)), tensor_images(9), batch_size=2, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_errors(tensor_images):
    with pytest.raises(ValueError, match="batch_size must be positive"):
        embed_dataset(lambda x: x, tensor_images(3), batch_size=0)
    with pytest.raises(ValueError, match="embed gallery: the dataset is empty"):
        embed_dataset(lambda x: x, tensor_images(0), desc="embed gallery")
