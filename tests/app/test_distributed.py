"""Two processes with gloo on the CPU give the weights of one process on the combined batch."""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pygml.app.builders import build_evaluator, build_method
from pygml.app.config import load_config
from pygml.app.distributed import SyncBatchNorm, all_gather_with_grad, convert_sync_batchnorm, gather_rows, shard
from pygml.app.evaluate import embed_split, evaluate_splits
from pygml.app.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES, STEPS, HALF = 4, 3, 8
# frozen BatchNorm: batch statistics are per process under DDP, as in the papers' multi-GPU code
COMMON = ["model.width=4", "model.embedding_dim=8", "model.frozen_bn=true", "optim.name=sgd", "optim.lr=0.1",
          "optim.momentum=0.0"]
CASES = {
    "baseline": ["method=baseline"],
    "intra_batch_cross_rank": ["method=intra_batch", "intra_batch.dropout=0.0", "intra_batch.heads=2"],
    # trainable BatchNorm, synchronised: statistics of the global batch as on one process
    "baseline_sync_batchnorm": ["method=baseline", "model.frozen_bn=false", "train.sync_batchnorm=true"],
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
    cfg = load_config(None, COMMON + overrides)
    method = build_method(cfg, NUM_CLASSES)
    if world > 1 and cfg.train.sync_batchnorm:
        convert_sync_batchnorm(method)
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


def _worker(rank: int, port: int, overrides, out: str, job=None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        state = (job or _train)(overrides, rank, 2)
        if rank == 0:
            torch.save(state, out)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, overrides, job=None):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), overrides, str(out), job), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_equal_one_process_on_the_combined_batch(tmp_path, case):
    single = _train(CASES[case])
    ddp = _spawn(tmp_path, CASES[case])
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
    """train.py under torchrun (cross-rank graph, SyncBatchNorm, sharded evaluation), then eval.py under
    torchrun gives the metrics eval.py gives in one process."""
    pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn")
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2"]
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(args):
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run(torchrun + ["--master_port", str(_free_port()), str(ROOT / "train.py"),
                    "method=intra_batch", "train.cross_rank_graph=true", "train.sync_batchnorm=true",
                    "model.frozen_bn=false", "data.name=digits", "data.image_size=16",
                    "model.width=4", "model.embedding_dim=8", "train.classes_per_batch=2", "train.samples_per_class=4",
                    "train.max_steps_per_epoch=3", "train.epochs=1", "train.progress=false", "eval.nmi=false",
                    f"train.out_dir={out}"])
    assert (out / "checkpoint.pt").exists() and (out / "metrics.json").exists()
    trained = json.loads((out / "metrics.json").read_text())["test"]
    proc = run(torchrun + ["--master_port", str(_free_port()), str(ROOT / "eval.py"),
                           "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "two")])
    # rank 0 alone reports: the table on stdout, the files written in the log (stderr)
    assert proc.stdout.count("test split of digits") == 1 and proc.stderr.count("written:") == 1
    run([sys.executable, str(ROOT / "eval.py"), "--checkpoint", str(out / "checkpoint.pt"), "--out",
         str(tmp_path / "one")])
    two = json.loads((tmp_path / "two" / "eval_metrics.json").read_text())["test"]
    one = json.loads((tmp_path / "one" / "eval_metrics.json").read_text())["test"]
    assert two.keys() == one.keys()
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    assert two["recall@1"] == pytest.approx(trained["recall@1"], abs=1e-6)


def test_under_torchrun_a_user_error_is_printed_once(tmp_path):
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", "--master_port",
                str(_free_port())]
    proc = subprocess.run(torchrun + [str(ROOT / "train.py"), "train.epochs=0", f"train.out_dir={tmp_path}"], cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("error: config key 'train.epochs' is 0") == 1, proc.stderr[-3000:]
    assert "rank 1" not in proc.stderr


def test_without_sync_batchnorm_two_processes_differ_from_one(tmp_path):
    """The control of the SyncBatchNorm case: per-rank BatchNorm statistics change the weights."""
    overrides = ["method=baseline", "model.frozen_bn=false"]
    single, ddp = _train(overrides), _spawn(tmp_path, overrides)
    assert any(not torch.allclose(single[k].float(), ddp[k].float(), atol=1e-5, rtol=1e-4) for k in single)


def test_sync_batchnorm_matches_batchnorm_on_one_process_and_keeps_its_state():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.LazyLinear(3), torch.nn.BatchNorm1d(3, momentum=None))
    x = torch.randn(6, 3, 8, 8)
    net(x)
    plain = copy.deepcopy(net)
    weight = net[1].weight
    convert_sync_batchnorm(net)
    assert isinstance(net[1], SyncBatchNorm) and isinstance(net[4], SyncBatchNorm)
    assert net[1].weight is weight  # optimisers keep their parameters
    assert net.state_dict().keys() == plain.state_dict().keys()
    assert torch.equal(net(x), plain(x))  # one process: plain BatchNorm, running statistics included
    for key, value in plain.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(7)
        self.images = torch.rand(n, 3, 16, 16, generator=g)
        self.labels = torch.arange(n) % 5

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class _Splits:
    def __init__(self, n: int) -> None:
        self.val, self.query, self.gallery = None, _Images(n), _Images(n // 2)


def _evaluate(overrides, rank: int = 0, world: int = 1) -> dict:
    """Embeddings of 37 images and the metrics of a 37-query, 18-gallery split, sharded over the ranks."""
    torch.manual_seed(0)
    cfg = load_config(None, COMMON + overrides)
    method = build_method(cfg, NUM_CLASSES)
    emb, labels = embed_split(method, _Images(37), batch_size=4, progress=False, sharded=True)
    metrics = evaluate_splits(method, _Splits(37), build_evaluator(cfg), batch_size=4, device=torch.device("cpu"),
                              progress=False, homophily=(2, 2))
    if rank != 0:
        assert emb is None and labels is None and metrics == {}
    return {"emb": emb, "labels": labels, "metrics": metrics, "share": list(shard(37))}


def test_evaluation_shards_embedding_and_rank_zero_evaluates(tmp_path):
    overrides = ["method=baseline", "eval.recall_at=[1,2,4]"]
    single = _evaluate(overrides)
    ddp = _spawn(tmp_path, overrides, job=_evaluate)
    assert ddp["share"] == list(range(18))  # rank 0 embedded only its share ...
    assert torch.equal(ddp["labels"], single["labels"])  # ... and received every row, in order
    assert torch.allclose(ddp["emb"], single["emb"], atol=1e-6)
    assert ddp["metrics"].keys() == single["metrics"].keys() == {"test"}
    for key, value in single["metrics"]["test"].items():
        assert ddp["metrics"]["test"][key] == pytest.approx(value, abs=1e-9), key


def _gather(overrides, rank: int = 0, world: int = 1) -> dict:
    rows = torch.full((3 + 2 * rank, 2), float(rank))  # 3 rows on rank 0, 5 on rank 1
    gathered = gather_rows(rows)
    if rank != 0:
        assert gathered is None
    return {"rows": gathered, "labels": gather_rows(torch.arange(3 + 2 * rank) + 10 * rank)}


def test_gather_rows_collects_unequal_shares_on_rank_zero(tmp_path):
    out = _spawn(tmp_path, [], job=_gather)
    assert out["rows"][:, 0].tolist() == [0.0] * 3 + [1.0] * 5
    assert out["labels"].tolist() == [0, 1, 2, 10, 11, 12, 13, 14]
    x = torch.randn(4, 2)
    assert gather_rows(x) is x and list(shard(5)) == [0, 1, 2, 3, 4]  # no process group: identity
