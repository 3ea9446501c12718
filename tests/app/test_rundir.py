"""pygml.app.rundir: one writer per run directory (a live holder refuses a second run, a dead one's lock is
taken over, evaluation reads without the lock), and what ``--resume``, ``--overwrite`` and a changed
config do to a directory that holds a run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pygml.app import engine
from pygml.app.checkpoint import CheckpointError, load_checkpoint
from pygml.app.cli import eval_main, train_main
from pygml.app.config import ConfigError
from pygml.app.engine import train
from pygml.app.rundir import FOREIGN_LOCK_TIMEOUT_S, LOCK_FILE, RunDirError, RunLock, _boot_id, resume_mode

HOLD = ("import sys, time\nfrom pygml.app.rundir import RunLock\nRunLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(600)\n")


@pytest.fixture
def holder(tmp_path):
    """``holder(directory)``: another process that holds ``directory``'s run lock until the test ends."""
    procs = []

    def start(directory):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_run_on_a_held_directory_is_refused_then_takes_over_a_dead_holder_s_lock(
        tmp_path, tiny_overrides, holder, capsys):
    out = tmp_path / "run"
    proc = holder(out)
    args = [*tiny_overrides, "train.epochs=1", f"train.out_dir={out}"]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert (f"error: {out} is in use by another run: pid {proc.pid} on host {socket.gethostname()} (started "
            in err), err
    assert "another train.out_dir" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE], "the refused run wrote nothing"

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / LOCK_FILE).exists()  # left behind by the killed holder
    assert train_main(args) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of {out} left by pid {proc.pid}" in err
    assert "that process is no longer running" in err
    assert not (out / LOCK_FILE).exists() and (out / "metrics.json").exists()


def test_evaluation_reads_a_held_directory_without_the_lock(tmp_path, tiny_overrides, holder, capsys):
    out = tmp_path / "run"
    assert train_main([*tiny_overrides, "train.epochs=1", f"train.out_dir={out}"]) == 0
    proc = holder(out)
    lock = (out / LOCK_FILE).read_text()
    assert eval_main(["--checkpoint", str(out / "checkpoint.pt")]) == 0
    assert (out / LOCK_FILE).read_text() == lock and json.loads(lock)["pid"] == proc.pid
    assert (out / "eval_metrics.json").exists()


def test_a_lock_from_another_host_is_refused_while_fresh_and_taken_over_when_stale(tmp_path, caplog):
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(json.dumps({"pid": 1, "host": "node-17", "boot": None, "started": "earlier"}))
    with pytest.raises(RunDirError, match=rf"{tmp_path} is in use by a run on another host: pid 1 on host node-17 "
                                          r"\(started earlier\), its lock refreshed \d+ s ago"):
        RunLock(tmp_path).acquire()
    stale = time.time() - FOREIGN_LOCK_TIMEOUT_S - 60
    os.utime(lock_file, (stale, stale))
    with RunLock(tmp_path):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert "last refreshed 11 minutes ago" in caplog.text and not lock_file.exists()
    lock_file.write_text(json.dumps({"pid": 1, "host": "node-17", "boot": None, "started": "earlier"}))
    with RunLock(tmp_path, take_foreign=True):
        pass
    assert "--overwrite was given" in caplog.text


def test_a_lock_from_an_earlier_boot_is_stale(tmp_path, caplog):
    if _boot_id() is None:
        pytest.skip("no boot id on this system (/proc/sys/kernel/random/boot_id)")
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "boot": "an-earlier-boot", "started": "yesterday"}))
    with RunLock(tmp_path):
        pass
    assert "that host has rebooted since" in caplog.text


def test_the_lock_is_held_during_a_run_and_given_back_on_failure(tmp_path, tiny_config, monkeypatch):
    seen = {}

    def failing_step(run, *args):
        seen["holder"] = json.loads((tmp_path / LOCK_FILE).read_text())
        raise RuntimeError("a failure in the middle of the run")

    monkeypatch.setattr(engine, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="a failure in the middle"):
        train(tiny_config("train.epochs=1"))
    assert seen["holder"]["pid"] == os.getpid() and seen["holder"]["host"] == socket.gethostname()
    assert not (tmp_path / LOCK_FILE).exists()


def test_resume_modes(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {tmp_path / 'checkpoint.pt'}"):
        train(tiny_config("train.epochs=1"), resume="must")
    assert not tmp_path.joinpath(LOCK_FILE).exists()
    first = train(tiny_config("train.epochs=1", "train.stop_after_steps=2", "train.resume=auto"))  # starts afresh
    assert first["global_step"] == 2
    with pytest.raises(RunDirError, match=rf"{tmp_path} holds a run \(its checkpoint.pt\): continue it with --resume"):
        train(tiny_config("train.epochs=1"))
    assert train(tiny_config("train.epochs=1"), resume="auto")["global_step"] == 5
    with pytest.raises(ConfigError, match="--overwrite starts a run afresh and --resume continues it"):
        train(tiny_config("train.epochs=1"), resume="auto", overwrite=True)
    again = train(tiny_config("train.epochs=1", "train.stop_after_steps=1"), overwrite=True)
    assert again["global_step"] == 1 and load_checkpoint(tmp_path / "checkpoint.pt")["run"]["global_step"] == 1
    assert [resume_mode(v) for v in (None, False, True, "true", "auto", "must", "never")] == \
        ["never", "never", "must", "must", "auto", "must", "never"]
    with pytest.raises(ConfigError, match="config key 'train.resume' is 'sometimes'"):
        tiny_config("train.resume=sometimes")


def test_resuming_without_a_directory_is_refused(tiny_overrides):
    from pygml.app.config import load_config

    with pytest.raises(ConfigError, match="resuming needs the run's directory: set train.out_dir"):
        train(load_config(None, [*tiny_overrides, "train.epochs=1"]), resume="auto")


def test_a_resumed_run_refuses_config_changes_that_alter_it(tmp_path, tiny_config, caplog):
    train(tiny_config("train.epochs=1", "train.stop_after_steps=2"))
    with pytest.raises(ConfigError, match=r"config changes that alter the run \(optim.lr: 0.001 → 0.01\).*"
                                          "--allow-config-change"):
        train(tiny_config("train.epochs=2", "optim.lr=0.01"), resume="auto")
    result = train(tiny_config("train.epochs=2", "train.stop_after_steps=7"), resume="auto")  # free keys
    assert result["global_step"] == 7 and "train.epochs: 1 → 2" in caplog.text
    result = train(tiny_config("train.epochs=2", "optim.lr=0.01"), resume="auto", allow_config_change=True)
    assert result["finished"] and "optim.lr: 0.001 → 0.01" in caplog.text
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["optim"]["lr"] == 0.01
    assert "lr: 0.01" in (tmp_path / "config.yaml").read_text()


def test_a_bare_resume_keeps_the_override_after_it(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    assert train_main([*tiny_overrides, "train.epochs=1", "train.stop_after_steps=2", f"train.out_dir={out}"]) == 0
    assert train_main([*tiny_overrides, f"train.out_dir={out}", "--resume", "train.epochs=1"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["run"]["global_step"] == 5
