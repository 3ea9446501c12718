"""A real training process killed with SIGKILL at a random step, then resumed, ends with the weights of
an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pygml.app.checkpoint import load_checkpoint

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


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]


def test_sigkill_at_a_random_step_then_resume(tmp_path, launch):
    full = tmp_path / "full"
    _finish(launch(full))
    reference = load_checkpoint(full / "checkpoint.pt")

    target = random.Random().randint(2, 20)  # of 24 steps
    killed = tmp_path / "killed"
    proc = launch(killed)
    ckpt = killed / "checkpoint.pt"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            if load_checkpoint(ckpt)["run"]["global_step"] >= target:
                break
        except ValueError:  # not written yet
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(ckpt)  # whatever instant the kill came, the file on disk is whole
    assert state["run"]["global_step"] < 24

    _finish(launch(killed, "--resume"))
    resumed = load_checkpoint(ckpt)
    assert resumed["run"]["global_step"] == reference["run"]["global_step"] == 24
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), f"{key} differs after a kill at step ~{target}"
