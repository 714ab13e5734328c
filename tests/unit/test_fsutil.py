"""The one atomic write (imaguard._fsutil.atomic_write) every layer uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imaguard import _fsutil


def test_writes_the_bytes_with_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    _fsutil.atomic_write(target, b"new contents", mode=0o600)
    assert target.read_bytes() == b"new contents"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_fsyncs_the_file_and_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    _fsutil.atomic_write(tmp_path / "f", b"x")
    assert synced == ["file", "dir"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        _fsutil.atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_relative_path_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _fsutil.atomic_write("rel", b"data")
    assert (tmp_path / "rel").read_bytes() == b"data"


def test_every_writer_in_the_library_uses_it() -> None:
    # One atomic write: no other module renames a temporary file into place itself.
    # (cli/_main.py's _write_atomic belongs to the CLI split and is left to it.)
    src = Path(_fsutil.__file__).parent
    offenders = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if p.name != "_fsutil.py"
        and p.parent.name != "cli"
        and ("os.replace(" in p.read_text() or "os.rename(" in p.read_text())
    ]
    assert offenders == []
