"""File-system helpers shared by every layer (private): one atomic, durable write.

Below every layer, like :mod:`imaguard.errors`: it imports nothing from imaguard.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["atomic_write", "pread_all"]


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory (so the rename stays on one
    file system), which is fsynced, given ``mode`` and renamed over ``path``; the directory
    is then fsynced so the rename itself survives a crash (see rename(2), fsync(2)). On
    failure the temporary file is removed and the OSError raised; ``path`` is untouched.
    """
    target = os.fspath(path)
    directory, base = os.path.split(target)
    directory = directory or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def pread_all(fd: int, limit: int) -> bytes | None:
    """Every byte of ``fd`` from offset 0 (pread: the file offset is not moved), or None
    when there are more than ``limit`` (a file that grows while read is no exception)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.pread(fd, min(1 << 20, limit + 1 - total), total)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None
