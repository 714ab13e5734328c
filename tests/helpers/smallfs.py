"""A small file system that a test can fill up: ext4 in a loop-mounted image, else tmpfs.

``mount -o loop`` attaches the image to a free loop device with autoclear, so ``umount``
detaches it again; :func:`small_fs` checks that it did (``losetup -j IMAGE``). A tmpfs
with a ``size=`` limit is the fallback where loop devices or mkfs.ext4 are missing (the
reason is kept in :attr:`SmallFs.fallback`). Needs root; a test without it skips, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT = 30


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False)


@dataclass
class SmallFs:
    path: Path
    kind: str
    """``ext4 (loop)`` or ``tmpfs``."""
    fallback: str | None = None
    """Why it is not ext4 on a loop device, when it is not."""

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def fill(self) -> int:
        """Take every free block (a file written until ENOSPC); the bytes it took."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        total = 0
        try:
            for size in (1 << 16, 1 << 12, 1 << 10, 1):
                chunk = b"\xa5" * size
                while True:
                    try:
                        n = os.write(fd, chunk)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
                    total += n
            os.fsync(fd)
        finally:
            os.close(fd)
        return total

    def free(self) -> None:
        """Give the space back."""
        self.filler.unlink()
        os.sync()


@contextlib.contextmanager
def small_fs(where: Path, size_kib: int = 4096) -> Iterator[SmallFs]:
    """A file system of about ``size_kib`` KiB mounted at ``where``; unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    where.mkdir(parents=True, exist_ok=True)
    image = where.parent / f"{where.name}.img"
    fallback = None
    if shutil.which("mkfs.ext4") is None:
        fallback = "mkfs.ext4 is missing (e2fsprogs)"
    else:
        image.write_bytes(b"")
        os.truncate(image, size_kib * 1024)
        r = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        if r.returncode != 0:
            fallback = f"mkfs.ext4 failed: {r.stderr.strip()}"
        else:
            r = _run("mount", "-o", "loop", str(image), str(where))
            if r.returncode != 0:
                fallback = f"mount -o loop failed: {r.stderr.strip()}"
    if fallback is None:
        fs = SmallFs(where, "ext4 (loop)")
    else:
        image.unlink(missing_ok=True)
        r = _run("mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(where))
        if r.returncode != 0:
            pytest.skip(f"no small file system: {fallback}; tmpfs: {r.stderr.strip()}")
        fs = SmallFs(where, "tmpfs", fallback)
    try:
        yield fs
    finally:
        if _run("umount", str(where)).returncode != 0:
            _run("umount", "-l", str(where))
        if fs.kind.startswith("ext4"):
            left = _run("losetup", "-j", str(image)).stdout.strip()
            image.unlink()
            assert not left, f"the loop device is still attached after umount: {left}"
