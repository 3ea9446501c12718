"""pygml.app.loading: training images that become unreadable after the run started are an error naming the
image and the step, or skipped and counted with ``data.skip_corrupt``; a data-loader worker that dies is
an error naming the worker and the batch, not a hang."""

import os
import signal

import pandas as pd
import pytest
from torch.utils.data import get_worker_info

from pygml.app import engine, loading
from pygml.app.cli import train_main
from pygml.app.engine import train
from pygml.app.loading import DataError, LoaderWorkerError
from tests.image_trees import make_tree

#: an image folder run: 8 classes of 6 images (4 train classes), P×K = 2×3, 4 steps an epoch
FOLDER = ("data.name=folder", "data.image_size=16", "model.width=8", "model.embedding_dim=16",
          "train.classes_per_batch=2", "train.samples_per_class=3", "train.max_steps_per_epoch=4",
          "train.progress=false", "eval.recall_at=[1]", "eval.nmi=false", "train.epochs=1")


@pytest.fixture
def images(tmp_path):
    return make_tree(tmp_path / "images", classes=8, per_class=6, corrupt=False, singleton=False)


def _spoil_after_first_step(monkeypatch) -> list:
    """After the first training step, half of each training class's images are overwritten with junk and one
    more is deleted; returns the list of spoiled paths (filled when it happens)."""
    spoiled = []
    original = engine.training_step

    def step(run, images, labels, state, bar):
        if state.global_step == 1 and not spoiled:
            by_class = {}
            for path, label in zip(run.splits.train.paths, run.splits.train.labels):
                by_class.setdefault(int(label), []).append(path)
            for paths in by_class.values():
                for path in paths[:3]:
                    with open(path, "wb") as f:
                        f.write(b"\x89PNG\r\n not an image any more")
                    spoiled.append(str(path))
            os.remove(by_class[0][3])
            spoiled.append(str(by_class[0][3]))
        return original(run, images, labels, state, bar)

    monkeypatch.setattr(engine, "training_step", step)
    return spoiled


def test_an_image_spoiled_mid_run_is_named_with_the_step(tmp_path, images, monkeypatch, capsys):
    spoiled = _spoil_after_first_step(monkeypatch)
    out = tmp_path / "run"
    assert train_main([*FOLDER, f"data.root={images}", f"train.out_dir={out}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and spoiled
    assert err[0].startswith("error: epoch 1, step ") and "(global step " in err[0]
    assert any(path in err[0] for path in spoiled), err[0]
    assert "data.skip_corrupt=true" in err[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_corrupt_drops_and_counts_images_spoiled_mid_run(tmp_path, images, tiny_config, monkeypatch, caplog,
                                                              workers):
    spoiled = _spoil_after_first_step(monkeypatch)
    # two epochs: a loader worker may have read all of epoch 1 before the first step ends, but epoch 2's
    # workers start after the images were spoiled
    cfg = tiny_config(*FOLDER, f"data.root={images}", "data.skip_corrupt=true", f"data.num_workers={workers}",
                      "train.epochs=2")
    result = train(cfg)
    assert result["finished"] and result["global_step"] == 8
    skipped = int(pd.read_csv(tmp_path / "log.csv")["skipped_images"].iloc[-1])
    warned = [r.getMessage() for r in caplog.records if "skipped an unreadable image at epoch " in r.getMessage()]
    assert skipped == len(warned) > 0
    assert all(any(path in message for path in spoiled) for message in warned)


def test_a_loader_worker_that_dies_is_named_with_the_batch(tiny_overrides, tmp_path, monkeypatch, capsys):
    original = loading.ReadGuard.__getitem__
    trigger = tmp_path / "die"

    def getitem(self, index):
        if get_worker_info() is not None and trigger.exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, index)

    step = engine.training_step

    def step_then_trigger(run, images, labels, state, bar):
        trigger.touch()
        return step(run, images, labels, state, bar)

    monkeypatch.setattr(loading.ReadGuard, "__getitem__", getitem)
    monkeypatch.setattr(engine, "training_step", step_then_trigger)
    code = train_main([*tiny_overrides, "train.epochs=1", "data.num_workers=1", "train.max_steps_per_epoch=5",
                       f"train.out_dir={tmp_path / 'run'}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(err) == 1
    # torch names the worker by its pid; a worker that dies while handing a batch over resets its connection
    assert err[0].startswith(("error: DataLoader worker (pid", "error: a DataLoader worker died while handing over"))
    assert "while the training loader was producing the batch of epoch 1, step " in err[0]
    assert "lower data.num_workers" in err[0]


def test_readable_batches_alone():
    good = ("images", "labels")
    bad = loading.Unreadable(3, "cannot read image /x/3.png: broken")
    batches = [(good, []), (good, [bad])]
    with pytest.raises(DataError, match=r"^at step 2: cannot read image /x/3.png: broken$"):
        list(loading.readable_batches(iter(batches), skip=False, where=lambda: "at step 2"))
    assert [n for _, n in loading.readable_batches(iter(batches), skip=True, where=lambda: "s")] == [0, 1]
    with pytest.raises(DataError, match="none of the 1 images of the batch can be read"):
        list(loading.readable_batches(iter([(None, [bad])]), skip=True, where=lambda: "s"))
    with pytest.raises(LoaderWorkerError, match=r"DataLoader worker \(pid 7\) exited unexpectedly while the training "
                                                "loader was producing the batch of s"):
        with loading.worker_guard(lambda: "s"):
            raise RuntimeError("DataLoader worker (pid 7) exited unexpectedly.")
    with pytest.raises(LoaderWorkerError, match=r"^a DataLoader worker died while handing over a batch "
                                                r"\(ConnectionResetError: \[Errno 104\] reset\) while the training"):
        with loading.worker_guard(lambda: "s"):
            raise ConnectionResetError(104, "reset")
    with pytest.raises(RuntimeError, match="something else"):
        with loading.worker_guard(lambda: "s"):
            raise RuntimeError("something else")
