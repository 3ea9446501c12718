"""pygml.atomic: a file appears whole at its path or not at all."""

from __future__ import annotations

import pytest

from pygml.atomic import atomic_path, check_folder


def test_the_file_appears_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.") and tmp.suffix == ".tmp"
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    (tmp_path / ".out.bin.killed.tmp").write_bytes(b"left by a writer that was killed")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_check_folder_names_what_is_wrong(tmp_path):
    assert check_folder(tmp_path / "a.npy") == tmp_path / "a.npy"
    with pytest.raises(FileNotFoundError, match=f"cannot write the index {tmp_path}/no/i.faiss: the folder "
                                                f"{tmp_path}/no does not exist"):
        check_folder(tmp_path / "no" / "i.faiss", "index")
    with pytest.raises(ValueError, match="it is a folder"):
        check_folder(tmp_path)


def test_the_file_has_the_mode_of_a_file_written_in_place(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("in place")
    target = tmp_path / "atomic.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("atomic")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
