"""Real training processes stopped from outside end with the weights of an uninterrupted run: killed with
SIGKILL at a random step then resumed; preempted by SIGTERM and SIGUSR1 (exit 75) and requeued with the
same ``--resume auto`` command; a torchrun worker killed and the workers restarted by torchrun's elastic
agent. A run whose file system fills up stops with exit 74 and its last checkpoint whole."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pygml.app.checkpoint import load_checkpoint
from pygml.app.cli import EXIT_STORAGE
from pygml.app.preemption import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[2]
#: on top of the tiny run: 3 epochs of 8 steps, a checkpoint after every step
EXTRA = ["train.max_steps_per_epoch=8", "train.epochs=3", "train.checkpoint_every_steps=1", "eval.recall_at=[1]",
         "train.eval_test_every_epoch=false"]


@pytest.fixture
def launch(tiny_overrides):
    def start(out: Path, *extra: str) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        args = [*tiny_overrides, *EXTRA, f"train.out_dir={out}", *extra]
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    return start


def _finish(proc: subprocess.Popen, code: int = 0) -> str:
    """``proc``'s stderr once it has ended with exit status ``code``."""
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err[-2000:]
    return err


def _wait_for_step(proc: subprocess.Popen, ckpt: Path, target: int) -> None:
    """Return once the checkpoint ``ckpt`` is at global step ``target`` or later, ``proc`` still running."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            if load_checkpoint(ckpt)["run"]["global_step"] >= target:
                break
        except ValueError:  # not written yet
            pass
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {target}: {proc.communicate()[1][-2000:]}"


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_sigkill_at_a_random_step_then_resume(tmp_path, launch):
    full = tmp_path / "full"
    _finish(launch(full))
    reference = load_checkpoint(full / "checkpoint.pt")

    target = random.Random().randint(2, 20)  # of 24 steps
    killed = tmp_path / "killed"
    proc = launch(killed)
    ckpt = killed / "checkpoint.pt"
    _wait_for_step(proc, ckpt, target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(ckpt)  # whatever instant the kill came, the file on disk is whole
    assert state["run"]["global_step"] < 24

    _finish(launch(killed, "--resume"))
    resumed = load_checkpoint(ckpt)
    assert resumed["run"]["global_step"] == reference["run"]["global_step"] == 24
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), f"{key} differs after a kill at step ~{target}"


def test_preempted_by_sigterm_then_sigusr1_and_requeued_with_the_same_command(tmp_path, launch):
    """The scheduler's signals stop the run after a step with a checkpoint of that step and exit 75; the same
    command (``--resume auto``) continues it each time, and the end is the uninterrupted run."""
    full = tmp_path / "full"
    _finish(launch(full))
    out = tmp_path / "preempted"
    ckpt = out / "checkpoint.pt"
    command = ("train.checkpoint_every_steps=3", "--resume", "auto")
    target = random.Random().randint(2, 9)  # of 24 steps
    stopped = 0
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        proc = launch(out, *command)
        _wait_for_step(proc, ckpt, max(target, stopped + 3))
        proc.send_signal(sig)
        err = _finish(proc, EXIT_PREEMPTED)
        found = re.findall(rf"preempted at step (\d+) \({sig.name}\): checkpoint {ckpt} written", err)
        assert len(found) == 1, err[-2000:]
        step = int(found[0])
        assert stopped < step < 24 and load_checkpoint(ckpt)["run"]["global_step"] == step
        stopped = step
    err = _finish(launch(out, *command))
    assert f"resuming {out} at step {stopped}" in err
    assert load_checkpoint(ckpt)["run"]["global_step"] == 24
    _same_weights(full / "checkpoint.pt", ckpt)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _rank_pids(agent: int) -> dict[int, int]:
    """rank → pid of the training processes under torchrun's process ``agent`` (from /proc)."""
    ranks = {}
    for pid in _children(agent):
        try:
            env = dict(item.split("=", 1) for item in
                       Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if "RANK" in env and "LOCAL_RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc (Linux)")
def test_a_torchrun_worker_killed_at_a_random_step_is_restarted_by_the_elastic_agent(tmp_path, tiny_overrides):
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
                "--max-restarts", "1", "--monitor-interval", "0.2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def start(out: Path) -> subprocess.Popen:
        args = [*tiny_overrides, *EXTRA, "train.checkpoint_every_steps=2", f"train.out_dir={out}", "--resume", "auto"]
        return subprocess.Popen([*torchrun, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    full = tmp_path / "full"
    _finish(start(full))
    rng = random.Random()
    target, rank = rng.randint(2, 18), rng.randint(0, 1)  # of 24 steps
    out = tmp_path / "elastic"
    proc = start(out)
    _wait_for_step(proc, out / "checkpoint.pt", target)
    pids = _rank_pids(proc.pid)
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[rank], signal.SIGKILL)
    err = _finish(proc)
    assert re.search(r"resuming .* at step \d+", err), err[-3000:]
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 24
    _same_weights(full / "checkpoint.pt", out / "checkpoint.pt")


@pytest.fixture
def small_filesystem(tmp_path):
    """``small_filesystem(size)``: a tmpfs of ``size`` bytes mounted for the test (needs root)."""
    mounted = []

    def mount(size: int) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
        mounted.append(where)
        return where

    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; the injected failures of test_storage.py run anyway")
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_file_system_that_fills_up_stops_the_run_with_its_last_checkpoint(tmp_path, launch, small_filesystem):
    first = tmp_path / "first"
    _finish(launch(first, "train.stop_after_steps=1"))
    size = (first / "checkpoint.pt").stat().st_size
    # room for the small run files and one checkpoint and a half: the second checkpoint cannot be written
    # while the first is still there
    disk = small_filesystem(size + size // 2 + 64 * 1024)
    out = disk / "run"
    err = _finish(launch(out, "--resume", "auto"), EXIT_STORAGE)
    ckpt = out / "checkpoint.pt"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert errors[0].startswith(f"error: cannot write {ckpt}: No space left on device (ENOSPC); {ckpt} still holds "
                                "its previous version, whole; the last checkpoint is ")
    step = load_checkpoint(ckpt)["run"]["global_step"]
    assert f"(step {step}); the same command with --resume auto continues from it" in errors[0]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_signal_to_one_torchrun_worker_stops_every_rank_after_the_same_step(tmp_path, tiny_overrides):
    """Rank 1 alone gets SIGUSR1: both ranks write one checkpoint after the same step and exit 75; rank 0
    does not wait in a collective for a rank that left."""
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
                "--monitor-interval", "0.2"]
    out = tmp_path / "run"
    args = [*tiny_overrides, *EXTRA, "train.checkpoint_every_steps=2", f"train.out_dir={out}", "--resume", "auto"]
    proc = subprocess.Popen([*torchrun, str(ROOT / "train.py"), *args], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, out / "checkpoint.pt", random.Random().randint(2, 12))
    pids = _rank_pids(proc.pid)
    os.kill(pids[1], signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    found = re.findall(r"preempted at step (\d+) \(a signal to rank 1\)", err)
    assert len(found) == 1, err[-3000:]
    assert load_checkpoint(out / "checkpoint.pt")["run"]["global_step"] == int(found[0])
    # torchrun's report of its workers: the first to exit left with 75; a worker that was still exiting when
    # torchrun saw that is stopped by torchrun's SIGTERM (-15); no worker leaves with any other status
    root = re.search(r"Root Cause \(first observed failure\):.*?exitcode\s*:\s*(-?\d+)", err, re.S)
    assert root and root.group(1) == str(EXIT_PREEMPTED), err[-3000:]
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", err)
    assert set(codes) <= {str(EXIT_PREEMPTED), str(-signal.SIGTERM)}, err[-3000:]
