"""A ctypes binding for fanotify permission events (fanotify(7), fanotify_mark(2)).

Only the C library is needed. The pieces:

* :func:`fanotify_init` / :func:`fanotify_mark` with declared argument types: the mark mask
  is a 64-bit integer and must not be truncated by ctypes' default ``int`` conversion.
* :func:`parse_events`: one ``read(2)`` of the group fd returns a batch of
  ``struct fanotify_event_metadata`` records (``=IBBHQii``, 24 bytes, ``vers`` 3), each
  possibly followed by information records (a pidfd with ``FAN_REPORT_PIDFD``). A record
  whose ``fd`` is ``FAN_NOFD`` is the queue-overflow marker, not a permission event.
* :class:`FanotifyGroup`: the group fd, filesystem marks, responses, per-inode ignore marks.

Flags that an older kernel refuses (``EINVAL``) are dropped one by one at
``fanotify_init`` (``FAN_REPORT_PIDFD`` since 5.15, ``FAN_ENABLE_AUDIT`` since 4.15,
``FAN_MARK_EVICTABLE`` since 5.19); the group records what it got.

Ignore marks: after an allow the engine adds
``FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_EVICTABLE`` on the inode of the event fd
(``dirfd`` = the event fd, ``pathname`` NULL). Without ``FAN_MARK_IGNORED_SURV_MODIFY`` the
kernel clears the ignore mask on the first modify event of the inode (fanotify_mark(2));
``FAN_MARK_EVICTABLE`` keeps the mark from pinning the inode. ``FAN_MARK_IGNORE`` (6.0) is
not used: it has different rules (it also applies to events on children and needs
``SURV_MODIFY`` on mount and filesystem marks), and the IGNORED_MASK form is enough for
per-inode marks. ``FAN_MARK_FLUSH`` without a mark type removes every inode mark of the
group, which is how a policy or keyring change drops the kernel-side cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as _errno
import os
import re
import struct
from dataclasses import dataclass

from imaguard.errors import BackendError, FormatError

# fanotify_init flags (include/uapi/linux/fanotify.h)
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_CLASS_CONTENT = 0x00000004
FAN_CLASS_PRE_CONTENT = 0x00000008
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_UNLIMITED_MARKS = 0x00000020
FAN_ENABLE_AUDIT = 0x00000040
FAN_REPORT_PIDFD = 0x00000080
FAN_REPORT_TID = 0x00000100

# events
FAN_ACCESS = 0x00000001
FAN_MODIFY = 0x00000002
FAN_CLOSE_WRITE = 0x00000008
FAN_OPEN = 0x00000020
FAN_Q_OVERFLOW = 0x00004000
FAN_OPEN_PERM = 0x00010000
FAN_ACCESS_PERM = 0x00020000
FAN_OPEN_EXEC_PERM = 0x00040000
PERM_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM

# fanotify_mark flags
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_MARK_ONLYDIR = 0x00000008
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_IGNORED_MASK = 0x00000020
FAN_MARK_IGNORED_SURV_MODIFY = 0x00000040
FAN_MARK_FLUSH = 0x00000080
FAN_MARK_FILESYSTEM = 0x00000100
FAN_MARK_EVICTABLE = 0x00000200
FAN_MARK_IGNORE = 0x00000400

# responses
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_AUDIT = 0x10

FANOTIFY_METADATA_VERSION = 3
FAN_NOFD = -1
FAN_NOPIDFD = -1
FAN_EPIDFD = -2
FAN_EVENT_INFO_TYPE_PIDFD = 4

AT_FDCWD = -100

_METADATA = struct.Struct("=IBBHQii")
_RESPONSE = struct.Struct("=iI")
_INFO_HEADER = struct.Struct("=BBH")
_PIDFD_INFO = struct.Struct("=i")
METADATA_LEN = _METADATA.size  # 24

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_init = _libc.fanotify_init
_init.argtypes = (ctypes.c_uint, ctypes.c_uint)
_init.restype = ctypes.c_int
_mark = _libc.fanotify_mark
_mark.argtypes = (ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p)
_mark.restype = ctypes.c_int
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

SYS_PIDFD_SEND_SIGNAL = 424  # the same number on every architecture (new-syscall table)


def fanotify_init(flags: int, event_f_flags: int) -> int:
    """``fanotify_init(2)``; OSError on failure."""
    fd = int(_init(flags, event_f_flags))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def fanotify_mark(
    group: int, flags: int, mask: int, dirfd: int = AT_FDCWD, path: str | None = None
) -> None:
    """``fanotify_mark(2)``; OSError on failure."""
    raw = os.fsencode(path) if path is not None else None
    if int(_mark(group, flags, mask, dirfd, raw)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


def pidfd_alive(pidfd: int) -> bool:
    """``pidfd_send_signal(pidfd, 0)``: is the process behind the pidfd still there?"""
    rc = int(_syscall(ctypes.c_long(SYS_PIDFD_SEND_SIGNAL), pidfd, 0, None, 0))
    return rc == 0


@dataclass(frozen=True)
class Event:
    """One record of a batch: the event mask, its fd (FAN_NOFD for overflow), the pid,
    and the pidfd from the info record (None without ``FAN_REPORT_PIDFD``; negative when
    the kernel could not make one)."""

    mask: int
    fd: int
    pid: int
    pidfd: int | None = None

    @property
    def overflow(self) -> bool:
        return self.fd == FAN_NOFD

    @property
    def permission(self) -> bool:
        return bool(self.mask & PERM_EVENTS)


def parse_events(buf: bytes | bytearray | memoryview) -> list[Event]:
    """Split one read of the group fd into its records.

    FormatError for a record of another metadata version, a length that leaves the
    buffer, or a truncated record; nothing after a bad record can be trusted, so the
    error carries the events parsed before it in ``events`` (the caller must still answer
    those).
    """
    view = memoryview(buf)
    out: list[Event] = []
    off = 0
    while off < len(view):
        if len(view) - off < METADATA_LEN:
            raise _bad(out, f"truncated fanotify record at offset {off}")
        event_len, vers, _res, meta_len, mask, fd, pid = _METADATA.unpack_from(view, off)
        if vers != FANOTIFY_METADATA_VERSION:
            raise _bad(
                out,
                f"fanotify metadata version {vers} at offset {off} "
                f"(this binding reads version {FANOTIFY_METADATA_VERSION})",
            )
        if event_len < METADATA_LEN or meta_len < METADATA_LEN or off + event_len > len(view):
            raise _bad(out, f"fanotify record at offset {off} has a bad length {event_len}")
        pidfd: int | None = None
        info = off + meta_len
        end = off + event_len
        while info + _INFO_HEADER.size <= end:
            itype, _pad, ilen = _INFO_HEADER.unpack_from(view, info)
            if ilen < _INFO_HEADER.size or info + ilen > end:
                raise _bad(out, f"fanotify info record at offset {info} has a bad length")
            if itype == FAN_EVENT_INFO_TYPE_PIDFD and ilen >= _INFO_HEADER.size + 4:
                (pidfd,) = _PIDFD_INFO.unpack_from(view, info + _INFO_HEADER.size)
            info += ilen
        out.append(Event(mask, fd, pid, pidfd))
        off += event_len
    return out


class EventFormatError(FormatError):
    """A batch could not be parsed past some record; ``events`` are those before it."""

    def __init__(self, message: str, events: list[Event]) -> None:
        super().__init__(message)
        self.events = events


def _bad(events: list[Event], message: str) -> EventFormatError:
    return EventFormatError(message, list(events))


def pack_event(mask: int, fd: int, pid: int, *, pidfd: int | None = None, vers: int = 3) -> bytes:
    """The bytes of one record (for tests and tools); with ``pidfd`` a pidfd info record."""
    info = b""
    if pidfd is not None:
        info = _INFO_HEADER.pack(FAN_EVENT_INFO_TYPE_PIDFD, 0, 8) + _PIDFD_INFO.pack(pidfd)
    return _METADATA.pack(METADATA_LEN + len(info), vers, 0, METADATA_LEN, mask, fd, pid) + info


def pack_response(fd: int, response: int) -> bytes:
    return _RESPONSE.pack(fd, response)


_INIT_BASE = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK
_INIT_OPTIONAL = (FAN_UNLIMITED_QUEUE, FAN_UNLIMITED_MARKS, FAN_ENABLE_AUDIT, FAN_REPORT_PIDFD)
_EVENT_F_FLAGS = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NOATIME


class FanotifyGroup:
    """A fanotify group fd for permission events (``FAN_CLASS_CONTENT``).

    ``audit`` and ``pidfd`` say whether ``FAN_ENABLE_AUDIT`` and ``FAN_REPORT_PIDFD`` were
    granted; ``evictable`` whether ``FAN_MARK_EVICTABLE`` works (learnt on first use).
    """

    def __init__(self, fd: int, *, flags: int | None = None) -> None:
        self.fd = fd
        self.flags = flags
        self.audit = flags is not None and bool(flags & FAN_ENABLE_AUDIT)
        self.pidfd = flags is not None and bool(flags & FAN_REPORT_PIDFD)
        self.unlimited_queue = flags is not None and bool(flags & FAN_UNLIMITED_QUEUE)
        self.evictable: bool | None = None
        self._closed = False

    @classmethod
    def create(cls) -> FanotifyGroup:
        """``fanotify_init`` with every optional flag the kernel accepts.

        ``FAN_UNLIMITED_QUEUE`` matters for safety: without it a full kernel queue allows
        the permission events that do not fit. It is kept unless the kernel refuses it.
        """
        flags = _INIT_BASE | sum(_INIT_OPTIONAL)
        for drop in (0, FAN_REPORT_PIDFD, FAN_ENABLE_AUDIT, FAN_UNLIMITED_MARKS):
            flags &= ~drop
            try:
                fd = fanotify_init(flags, _EVENT_F_FLAGS)
            except OSError as e:
                if e.errno == _errno.EINVAL:
                    continue
                raise _init_error(e) from e
            return cls(fd, flags=flags)
        # The kernel refused even the unlimited queue: take what is left, but say so.
        flags = _INIT_BASE
        try:
            fd = fanotify_init(flags, _EVENT_F_FLAGS & ~os.O_NOATIME)
        except OSError as e:
            raise _init_error(e) from e
        return cls(fd, flags=flags)

    @classmethod
    def adopt(cls, fd: int) -> FanotifyGroup:
        """An inherited group fd. Its init flags are read from /proc/self/fdinfo.

        The kernel does not show ``FAN_ENABLE_AUDIT`` there; audit responses are tried and
        dropped for good when the group refuses them (EINVAL).
        """
        try:
            os.fstat(fd)
        except OSError as e:
            raise BackendError(f"fanotify group fd {fd}: not an open descriptor") from e
        flags = _fdinfo_init_flags(fd)
        if flags is None:
            raise BackendError(f"fd {fd} is not a fanotify group")
        group = cls(fd, flags=flags)
        group.audit = True
        return group

    def mark_filesystem(self, path: str, *, open_events: bool = True) -> None:
        """A filesystem mark (``FAN_MARK_FILESYSTEM``) on the filesystem holding ``path``.

        A filesystem mark sees the filesystem through every mount and mount namespace
        (bind mounts, ``unshare -m``), unlike a mount mark.
        """
        mask = FAN_OPEN_EXEC_PERM | (FAN_OPEN_PERM if open_events else 0)
        try:
            fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, AT_FDCWD, path)
        except OSError as e:
            raise BackendError(f"{path}: cannot mark its filesystem: {e.strerror}") from e

    def unmark_filesystem(self, path: str) -> None:
        mask = FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM
        try:
            fanotify_mark(self.fd, FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM, mask, AT_FDCWD, path)
        except OSError as e:
            raise BackendError(f"{path}: cannot unmark its filesystem: {e.strerror}") from e

    def ignore(self, event_fd: int, mask: int) -> bool:
        """Add a per-inode ignore mark for ``mask`` on the inode of ``event_fd``.

        Cleared by the kernel on the inode's first modification (no SURV_MODIFY) and lost
        when the inode is evicted (EVICTABLE, where the kernel has it). False when the
        kernel refused it (the event simply comes again next time).
        """
        base = FAN_MARK_ADD | FAN_MARK_IGNORED_MASK
        if self.evictable is not False:
            try:
                fanotify_mark(self.fd, base | FAN_MARK_EVICTABLE, mask, event_fd, None)
                self.evictable = True
                return True
            except OSError as e:
                if e.errno != _errno.EINVAL or self.evictable:
                    return False
                self.evictable = False
        try:
            fanotify_mark(self.fd, base, mask, event_fd, None)
        except OSError:
            return False
        return True

    def unignore(self, event_fd: int) -> None:
        """Remove the ignore mask on the inode of ``event_fd`` (no-op when there is none)."""
        with contextlib.suppress(OSError):
            fanotify_mark(
                self.fd,
                FAN_MARK_REMOVE | FAN_MARK_IGNORED_MASK,
                FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM,
                event_fd,
                None,
            )

    def flush_ignore_marks(self) -> None:
        """Drop every inode mark of the group (``FAN_MARK_FLUSH`` with no mark type)."""
        try:
            fanotify_mark(self.fd, FAN_MARK_FLUSH, 0, AT_FDCWD, None)
        except OSError as e:
            raise BackendError(f"cannot flush the fanotify ignore marks: {e.strerror}") from e

    def respond(self, fd: int, allow: bool, *, audit: bool = False) -> None:
        """Write the answer for event ``fd``. OSError is left to the caller."""
        response = FAN_ALLOW if allow else FAN_DENY
        if audit and self.audit:
            try:
                os.write(self.fd, _RESPONSE.pack(fd, response | FAN_AUDIT))
                return
            except OSError as e:
                if e.errno != _errno.EINVAL:
                    raise
                self.audit = False  # an adopted group made without FAN_ENABLE_AUDIT
        os.write(self.fd, _RESPONSE.pack(fd, response))

    def read(self, size: int = 65536) -> bytes:
        """One batch; b"" when nothing is pending (the fd is non-blocking)."""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        """Close the group fd. The kernel then allows every event still pending on it."""
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> FanotifyGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _init_error(e: OSError) -> BackendError:
    if e.errno == _errno.EPERM:
        return BackendError("fanotify_init: permission events need CAP_SYS_ADMIN (run as root)")
    if e.errno == _errno.ENOSYS:
        return BackendError("fanotify_init: this kernel has no fanotify (CONFIG_FANOTIFY)")
    if e.errno == _errno.EINVAL:
        return BackendError(
            "fanotify_init: permission events are not supported "
            "(CONFIG_FANOTIFY_ACCESS_PERMISSIONS)"
        )
    return BackendError(f"fanotify_init: {e.strerror}")


def _fdinfo_init_flags(fd: int) -> int | None:
    """``fanotify flags:`` of an inherited group, from /proc/self/fdinfo (hex)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
            m = re.search(r"fanotify flags:\s*([0-9a-fA-F]+)", f.read())
    except OSError:
        return None
    return int(m.group(1), 16) if m else None
