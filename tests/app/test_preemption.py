"""pygml.app.preemption inside one process: a preemption signal stops the run after the current step with a
checkpoint of that step, even with step checkpoints off, and ``resume="auto"`` ends with the weights of an
uninterrupted run. The signals sent from outside to a real training process are in test_fault_tolerance.py."""

import os
import signal

import pytest
import torch

from pygml.app import engine
from pygml.app.checkpoint import load_checkpoint
from pygml.app.engine import train
from pygml.app.preemption import EXIT_PREEMPTED, Preempted, PreemptionSignals


def _signal_at(monkeypatch, sig: signal.Signals, step: int) -> None:
    """Send ``sig`` to this process during training step ``step`` (1-based global step)."""
    original = engine.training_step

    def step_then_signal(run, images, labels, state, bar):
        loss = original(run, images, labels, state, bar)
        if state.global_step + 1 == step:
            os.kill(os.getpid(), sig)
        return loss

    monkeypatch.setattr(engine, "training_step", step_then_signal)


@pytest.mark.parametrize("sig, step", [(signal.SIGTERM, 3), (signal.SIGUSR1, 5), (signal.SIGTERM, 7)],
                         ids=["SIGTERM-3", "SIGUSR1-5", "SIGTERM-7"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_auto_resume_finishes(tmp_path, tiny_config, monkeypatch,
                                                                                 caplog, sig, step):
    full = tmp_path / "full"
    train(tiny_config("train.epochs=2", out_dir=full))
    part = tmp_path / "part"
    _signal_at(monkeypatch, sig, step)
    with pytest.raises(Preempted, match=rf"preempted at step {step} \({sig.name}\)") as raised:
        train(tiny_config("train.epochs=2", "train.checkpoint_every_steps=0", out_dir=part), resume="auto")
    assert raised.value.step == step and raised.value.exit_code == EXIT_PREEMPTED == 75
    assert f"preempted at step {step}" in caplog.text
    assert load_checkpoint(part / "checkpoint.pt")["run"]["global_step"] == step  # written by the signal
    assert not (part / "run.lock").exists()
    assert signal.getsignal(sig) is signal.SIG_DFL, "the run's handlers are taken off when it ends"
    monkeypatch.undo()

    second = train(tiny_config("train.epochs=2", out_dir=part), resume="auto")
    assert second["finished"] and second["global_step"] == 10
    a, b = load_checkpoint(full / "checkpoint.pt")["model"], load_checkpoint(part / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_after_an_epoch_s_last_step_resumes_at_its_evaluation(tmp_path, tiny_config, monkeypatch):
    """Step 5 ends the first epoch: the checkpoint holds the epoch trained but not yet evaluated."""
    full = tmp_path / "full"
    reference = train(tiny_config("train.epochs=2", out_dir=full))
    part = tmp_path / "part"
    _signal_at(monkeypatch, signal.SIGTERM, 5)
    with pytest.raises(Preempted, match="preempted at step 5"):
        train(tiny_config("train.epochs=2", out_dir=part))
    run = load_checkpoint(part / "checkpoint.pt")["run"]
    assert (run["epoch"], run["step_in_epoch"], run["history"]) == (0, 5, [])
    monkeypatch.undo()
    resumed = train(tiny_config("train.epochs=2", out_dir=part), resume="auto")
    assert resumed["test"] == pytest.approx(reference["test"])


def test_signals_are_only_recorded_while_installed():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionSignals() as signals:
        assert signals.agreed() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == "SIGUSR1" and signals.agreed() == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before
