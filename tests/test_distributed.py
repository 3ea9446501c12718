"""Two processes with gloo on the CPU give the weights of one process on the combined batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pygml.config import load_config
from pygml.distributed import all_gather_with_grad
from pygml.engine import build_optimizer
from pygml.methods import build_method

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES, STEPS, HALF = 4, 3, 8
# frozen BatchNorm: batch statistics are per process under DDP, as in the papers' multi-GPU code
COMMON = ["model.width=4", "model.embedding_dim=8", "model.frozen_bn=true", "optim.name=sgd", "optim.lr=0.1",
          "optim.momentum=0.0"]
CASES = {
    "baseline": ["method=baseline"],
    "intra_batch_cross_rank": ["method=intra_batch", "intra_batch.dropout=0.0", "intra_batch.heads=2"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    images = torch.rand(2 * HALF, 3, 16, 16, generator=g)
    labels = torch.arange(2 * HALF) % NUM_CLASSES
    return images, labels


def _train(overrides, rank: int = 0, world: int = 1) -> dict:
    torch.manual_seed(0)
    method = build_method(load_config(None, COMMON + overrides), NUM_CLASSES)
    opt = build_optimizer(load_config(None, COMMON).optim, method.param_groups())
    model = method
    if world > 1:
        method.gather = all_gather_with_grad
        model = torch.nn.parallel.DistributedDataParallel(method, find_unused_parameters=True)
    for step in range(STEPS):
        images, labels = _batch(step)
        if world > 1:
            images, labels = images[rank * HALF:(rank + 1) * HALF], labels[rank * HALF:(rank + 1) * HALF]
        loss, _ = model(images, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def _worker(rank: int, port: int, overrides, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        state = _train(overrides, rank, 2)
        if rank == 0:
            torch.save(state, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_equal_one_process_on_the_combined_batch(tmp_path, case):
    single = _train(CASES[case])
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(_free_port(), CASES[case], str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    for key, value in single.items():
        assert torch.allclose(value.float(), ddp[key].float(), atol=1e-5, rtol=1e-4), key
    torch.manual_seed(0)
    fresh = build_method(load_config(None, COMMON + CASES[case]), NUM_CLASSES).state_dict()
    changed = any(not torch.equal(fresh[k], single[k]) for k in single if single[k].is_floating_point())
    assert changed, "training did not move the weights: the comparison would be empty"


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x


def test_torchrun_two_processes_end_to_end(tmp_path):
    pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn")
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_port", str(_free_port()), str(ROOT / "train.py"),
         "method=intra_batch", "train.cross_rank_graph=true", "data.name=digits", "data.image_size=16",
         "model.width=4", "model.embedding_dim=8", "train.classes_per_batch=2", "train.samples_per_class=4",
         "train.max_steps_per_epoch=3", "train.epochs=1", "train.progress=false", "eval.nmi=false",
         f"train.out_dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoint.pt").exists() and (out / "metrics.json").exists()
