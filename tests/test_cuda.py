"""The CUDA paths, each against the CPU or full-precision path it must agree with.

Every test here is marked ``cuda``: skipped without a CUDA device (tests/conftest.py), run on a GPU
machine by ``scripts/gpu-check.sh`` (``pytest -m cuda``). Covered: mixed precision (bf16 and fp16
with its gradient scaler) in the engine's training step, the evaluator's torch top-k on CUDA, faiss's
GPU index, torch's SyncBatchNorm, NCCL collectives and DDP at world size 1, and a checkpoint written
on the GPU resumed on the CPU and back.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pygml.app import distributed
from pygml.app.checkpoint import load_checkpoint
from pygml.app.engine import RunState, setup, train, training_step
from pygml.evaluation import build_index, evaluate

pytestmark = pytest.mark.cuda

#: (loss rtol, smallest cosine between the amp and the fp32 parameter update) per amp mode
AMP_TOLERANCE = {"bf16": (3e-2, 0.95), "fp16": (5e-3, 0.99)}


class _NoBar:
    def write(self, text: str) -> None:
        raise AssertionError(f"unexpected skipped step: {text}")


def _one_step(cfg) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(loss, parameters before, parameters after) of one training step of a fresh run of ``cfg``."""
    run = setup(cfg)
    run.sampler.set_epoch(0)
    images, labels = next(iter(DataLoader(run.splits.train, batch_sampler=run.sampler)))
    before = torch.cat([p.detach().flatten().float() for p in run.method.parameters()]).clone()
    loss = training_step(run, images, labels, RunState(), _NoBar())
    after = torch.cat([p.detach().flatten().float() for p in run.method.parameters()])
    return loss, before, after


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_step_agrees_with_fp32(tiny_config, amp):
    loss_rtol, min_cosine = AMP_TOLERANCE[amp]
    ref_loss, ref_before, ref_after = _one_step(tiny_config("train.device=cuda", "train.amp=off"))
    loss, before, after = _one_step(tiny_config("train.device=cuda", f"train.amp={amp}"))
    assert torch.equal(before, ref_before)  # the same seed gives the same initial weights
    assert loss == pytest.approx(ref_loss, rel=loss_rtol)
    update, ref_update = after - before, ref_after - ref_before
    assert ref_update.norm() > 0 and update.norm() > 0, f"{amp}: the step changed no weight (scaler skipped it?)"
    cosine = torch.nn.functional.cosine_similarity(update, ref_update, dim=0)
    assert cosine >= min_cosine, f"{amp} update vs fp32 update: cosine {cosine:.4f} < {min_cosine}"


def _clustered(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    return centres[labels] + rng.standard_normal((n, dim)).astype(np.float32), labels


@pytest.mark.parametrize("protocol", ["leave-one-out", "query vs gallery"])
def test_cuda_evaluator_gives_the_cpu_metrics(protocol):
    x, labels = _clustered(3000, 64, 150, seed=0)
    args = (x, labels) if protocol == "leave-one-out" else (x[:500], labels[:500], x[500:], labels[500:])
    kw = dict(recall_at=(1, 10, 100), nmi=False, chunk_size=256)
    cpu = evaluate(*args, device="cpu", **kw)
    cuda = evaluate(*args, device="cuda", **kw)
    assert cuda.keys() == cpu.keys()
    for key in cpu:
        assert cuda[key] == pytest.approx(cpu[key], abs=1e-6), key


def _gpu_faiss():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip(f"faiss {faiss.__version__} has no GPU support here (a GPU build of faiss is needed)")
    return faiss


def test_faiss_gpu_index_gives_the_cpu_neighbours():
    faiss = _gpu_faiss()
    x, labels = _clustered(5000, 64, 200, seed=1)
    gpu, cpu = build_index(x, "Flat", device="cuda"), build_index(x, "Flat", device="cpu")
    assert not isinstance(faiss.downcast_index(gpu), faiss.IndexFlat), "build_index(device='cuda') stayed on the CPU"
    q = np.ascontiguousarray(x[:300] / np.linalg.norm(x[:300], axis=1, keepdims=True))
    for k in (10, 1001):  # 1001: the depth of the evaluator benchmark's faiss reference
        d_gpu, i_gpu = gpu.search(q, k)
        d_cpu, i_cpu = cpu.search(q, k)
        np.testing.assert_allclose(d_gpu, d_cpu, atol=1e-5)
        assert (i_gpu == i_cpu).mean() > 0.999  # float32 near-ties may swap
    exact = evaluate(x, labels, recall_at=(1, 10), nmi=False, device="cpu")
    approx = evaluate(x, labels, recall_at=(1, 10), nmi=False, device="cuda", search="Flat")
    for key in exact:
        assert approx[key] == pytest.approx(exact[key], abs=1e-3), key


@pytest.fixture
def nccl_world_of_one():
    """A NCCL process group of one process (rank 0), destroyed afterwards."""
    if not dist.is_nccl_available():
        pytest.skip("torch was built without NCCL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4))


def test_sync_batchnorm_and_ddp_on_nccl_at_world_size_one(nccl_world_of_one):
    x = torch.randn(6, 3, 10, 10, device="cuda")
    plain = _bn_net().cuda()
    synced = distributed.convert_sync_batchnorm(_bn_net().cuda())
    assert isinstance(synced[1], torch.nn.SyncBatchNorm)
    ddp = torch.nn.parallel.DistributedDataParallel(synced, device_ids=[0])
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (plain, ddp)]
    for _ in range(2):
        for model, opt in zip((plain, ddp), opts):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(plain.state_dict().items(), synced.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


def test_nccl_collectives_of_the_distributed_helpers(nccl_world_of_one):
    assert distributed._comm_device().type == "cuda"
    x = torch.randn(5, 3, device="cuda", requires_grad=True)
    gathered = distributed._AllGather.apply(x)  # the gather the helpers use above world size 1
    torch.testing.assert_close(gathered, x)
    (gathered * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))
    reduced = distributed._AllReduceSum.apply(x.detach().clone())
    torch.testing.assert_close(reduced, x.detach())


def test_checkpoint_written_on_gpu_resumes_on_cpu_and_back(tmp_path, tiny_config):
    out = tmp_path / "run"
    first = train(tiny_config("train.device=cuda", "train.epochs=2", "train.stop_after_steps=3", out_dir=out))
    assert first["global_step"] == 3
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert "cuda" in ckpt["rng"] and all(t.device.type == "cpu" for t in ckpt["model"].values())
    second = train(tiny_config("train.device=cpu", "train.epochs=2", "train.stop_after_steps=7", out_dir=out),
                   resume=True)
    assert second["global_step"] == 7
    third = train(tiny_config("train.device=cuda", "train.epochs=2", out_dir=out), resume=True)
    assert third["finished"] and third["global_step"] == 10
    final = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in final["model"].values() if t.is_floating_point())
    assert 0.0 <= third["test"]["recall@1"] <= 1.0
