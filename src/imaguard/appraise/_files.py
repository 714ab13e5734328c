"""Opening and hashing files safely.

* A path is opened ``O_RDONLY | O_NONBLOCK | O_NOCTTY``: a FIFO then opens at once
  instead of hanging, and ``fstat`` on the descriptor (not the path) decides whether it
  is a regular file, so there is no window between the check and the use.
* Hashing reads into one reused buffer and compares ``fstat`` before and after; a file
  whose size, mtime, ctime or inode changed while it was read raises
  :class:`~imaguard.FileChangedError` and is never signed or trusted.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from imaguard.errors import FileChangedError, FileError
from imaguard.formats.hashalgo import HashAlgo

__all__ = [
    "ChangeCookie",
    "Digest",
    "FileRef",
    "Target",
    "change_cookie",
    "file_kind",
    "hash_bytes",
    "hash_fd",
    "open_ref",
    "open_target",
]

Target = str | os.PathLike[str] | int | bytes
"""What the library calls accept: a path, an open file descriptor, or the content itself."""

BUFFER_SIZE = 1 << 20
"""Read size for hashing: large enough that the per-call cost is noise, small enough for RSS."""

_local = threading.local()

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}


def file_kind(mode: int) -> str:
    """A human name for a file type ("a FIFO", "a regular file", ...)."""
    return _KINDS.get(stat.S_IFMT(mode), "a regular file" if stat.S_ISREG(mode) else "unknown")


@dataclass(frozen=True)
class Digest:
    """A content digest with the algorithm that made it."""

    algorithm: HashAlgo
    value: bytes
    size: int

    @property
    def hex(self) -> str:
        return self.value.hex()


@dataclass(frozen=True)
class FileRef:
    """An open regular file: its descriptor, the name to report, and the path if known."""

    fd: int
    name: str
    path: str | None
    st: os.stat_result


def _describe_target(target: Target) -> str:
    if isinstance(target, int):
        return f"<fd {target}>"
    if isinstance(target, bytes):
        return "<bytes>"
    return os.fspath(target)


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _open_error(path: str, e: OSError, follow_symlinks: bool) -> FileError:
    if e.errno == errno.ELOOP and not follow_symlinks:
        return FileError(path, "is a symbolic link (not followed)")
    if e.errno == errno.ENXIO:
        return FileError(path, "is a socket or a device with nothing behind it")
    return FileError(path, e.strerror or str(e))


def open_ref(target: str | os.PathLike[str] | int, *, follow_symlinks: bool = True) -> FileRef:
    """Like :func:`open_target` without the context manager: the caller closes ``ref.fd``
    when ``target`` was a path (a descriptor passed in is the caller's already)."""
    if isinstance(target, int):
        try:
            st = os.fstat(target)
        except OSError as e:
            raise FileError(f"<fd {target}>", f"not an open file descriptor ({e.strerror})") from e
        if not stat.S_ISREG(st.st_mode):
            raise FileError(f"<fd {target}>", f"is {file_kind(st.st_mode)}, not a regular file")
        return FileRef(target, f"<fd {target}>", None, st)
    name = os.fspath(target)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(name, flags)
    except OSError as e:
        raise _open_error(name, e, follow_symlinks) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileError(name, f"is {file_kind(st.st_mode)}, not a regular file")
        # O_NONBLOCK kept a FIFO from hanging the open; it has no effect on regular files.
    except BaseException:
        os.close(fd)
        raise
    return FileRef(fd, name, name, st)


@contextmanager
def open_target(
    target: str | os.PathLike[str] | int, *, follow_symlinks: bool = True
) -> Iterator[FileRef]:
    """Open a path (or adopt a descriptor) as a regular file; FileError otherwise.

    A descriptor passed in is used as is and not closed. A path is opened without
    blocking (a FIFO cannot hang it), checked through ``fstat`` on the descriptor, and
    closed on exit.
    """
    ref = open_ref(target, follow_symlinks=follow_symlinks)
    try:
        yield ref
    finally:
        if not isinstance(target, int):
            os.close(ref.fd)


def _buffer() -> memoryview:
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = memoryview(bytearray(BUFFER_SIZE))
        _local.buf = buf
    return buf


def hash_fd(ref: FileRef, algorithm: HashAlgo) -> Digest:
    """Hash an open regular file from offset 0, detecting changes while it is read."""
    h = algorithm.new()
    view = _buffer()
    before = ref.st  # taken on the descriptor when it was opened
    size = before.st_size
    offset = 0
    try:
        while True:
            n = os.preadv(ref.fd, [view], offset)
            if n == 0:
                break
            h.update(view[:n])
            offset += n
            if offset >= size and n < len(view):
                break  # a short read at the known size is the end (growth shows in fstat)
    except OSError as e:
        raise FileError(ref.name, f"read failed: {e.strerror or e}") from e
    after = os.fstat(ref.fd)
    if _identity(before) != _identity(after) or offset != after.st_size:
        raise FileChangedError(ref.name, "changed while it was being hashed; not trusted")
    return Digest(algorithm, h.digest(), offset)


FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long)


def generation(fd: int) -> int | None:
    """The inode generation (``FS_IOC_GETVERSION``), where the filesystem has one."""
    buf = bytearray(8)
    try:
        fcntl.ioctl(fd, FS_IOC_GETVERSION, buf)
    except OSError:
        return None
    return int.from_bytes(buf, "little", signed=True) & 0xFFFFFFFF


@dataclass(frozen=True)
class ChangeCookie:
    """What must be unchanged for a cached result to stand.

    Size, mtime and ctime (nanoseconds) and the inode generation where the filesystem
    reports one. Editing a file in place and restoring its mtime with ``utime`` still
    changes its ctime, which no unprivileged call can set back.
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    generation: int | None

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)


def change_cookie(fd: int, st: os.stat_result | None = None) -> ChangeCookie:
    st = st if st is not None else os.fstat(fd)
    return ChangeCookie(
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, generation(fd)
    )


def hash_bytes(data: bytes, algorithm: HashAlgo) -> Digest:
    h = algorithm.new()
    h.update(data)
    return Digest(algorithm, h.digest(), len(data))
