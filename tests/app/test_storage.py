"""pygml.app.storage: a run file that cannot be written (disk full, read-only file system, permission, the
folder removed) is one error naming the file; the previous version stays whole and no partial file is
left. Failures are injected here; test_fault_tolerance.py fills a real (tmpfs) file system."""

import errno
import json

import pytest
import torch

import pygml.atomic
from pygml.app import storage
from pygml.app.checkpoint import load_checkpoint, save_checkpoint
from pygml.app.cli import EXIT_STORAGE, train_main
from pygml.app.storage import StorageError, atomic_write


def _disk_fills_after(monkeypatch, budget: int, names=("checkpoint.pt",)) -> None:
    """Files named ``names`` opened by pygml.app.storage take ``budget`` bytes in all, then their writes fail
    with ENOSPC, as on a disk that fills."""
    left = {"bytes": budget}

    class FillingFile:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            left["bytes"] -= len(data)
            if left["bytes"] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def filling_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return FillingFile(f) if any(str(path).split("/")[-1].startswith(f".{n}.") for n in names) else f

    monkeypatch.setattr(storage, "open", filling_open, raising=False)


def test_a_disk_that_fills_during_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"method": "baseline", "v": 1, "w": torch.zeros(1000)}, path)
    _disk_fills_after(monkeypatch, budget=2000)
    with pytest.raises(StorageError, match=rf"^cannot write {path}: No space left on device \(ENOSPC\); {path} still "
                                           "holds its previous version, whole$") as raised:
        save_checkpoint({"method": "baseline", "v": 2, "w": torch.ones(1000)}, path)
    assert raised.value.errno == errno.ENOSPC
    assert load_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_file_that_cannot_be_created_is_named_with_the_cause(tmp_path, monkeypatch, code):
    path = tmp_path / "log.csv"
    path.write_text("old")

    def refuse(*args, **kwargs):
        raise OSError(code, __import__("os").strerror(code))

    monkeypatch.setattr(pygml.atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(StorageError, match=rf"cannot write {path}: .* \({errno.errorcode[code]}\); {path} still holds"):
        atomic_write(path, "new")
    assert path.read_text() == "old"


def test_a_folder_removed_under_the_run_is_named(tmp_path):
    gone = tmp_path / "run"
    with pytest.raises(StorageError, match=rf"cannot write {gone}/metrics.json: .*\(ENOENT\); its folder {gone} no "
                                           "longer exists"):
        atomic_write(gone / "metrics.json", "{}")
    assert not gone.exists()


def test_content_kinds_and_errors_that_are_not_storage(tmp_path):
    atomic_write(tmp_path / "a.txt", "é")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"xyz"))
    assert (tmp_path / "a.txt").read_text("utf-8") == "é" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.bin").read_bytes() == b"xyz"

    def fails(f):
        raise TypeError("not a write failure")

    with pytest.raises(TypeError, match="not a write failure"):
        atomic_write(tmp_path / "a.txt", fails)
    assert (tmp_path / "a.txt").read_text("utf-8") == "é"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.bin"]


def test_a_run_whose_disk_fills_exits_74_with_one_line_and_its_last_checkpoint(tmp_path, tiny_overrides, monkeypatch,
                                                                                 capsys):
    out = tmp_path / "run"
    assert train_main([*tiny_overrides, "train.epochs=1", "train.stop_after_steps=1", f"train.out_dir={out}"]) == 0
    size = (out / "checkpoint.pt").stat().st_size
    capsys.readouterr()
    _disk_fills_after(monkeypatch, budget=size + size // 2)  # the step-2 checkpoint fits, the step-3 one does not
    code = train_main([*tiny_overrides, "train.epochs=1", "train.checkpoint_every_steps=1", f"train.out_dir={out}",
                       "--resume", "auto"])
    err = capsys.readouterr().err
    assert code == EXIT_STORAGE == 74
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert line == [f"error: cannot write {out / 'checkpoint.pt'}: No space left on device (ENOSPC); "
                    f"{out / 'checkpoint.pt'} still holds its previous version, whole; the last checkpoint is "
                    f"{out / 'checkpoint.pt'} (step 2); the same command with --resume auto continues from it"]
    assert "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.pt")["run"]["global_step"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "env.json"]
    monkeypatch.undo()
    assert train_main([*tiny_overrides, "train.epochs=1", f"train.out_dir={out}", "--resume", "auto"]) == 0
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 5
