"""What the policy needs to know about a file and a task, read from the system.

* ``fsmagic`` comes from ``fstatfs`` (f_type), ``fsname`` from ``/proc/self/mountinfo``
  (the mount whose device is the file's ``st_dev``).
* The change cookie the integrity cache keys on is
  :class:`imaguard.appraise._files.ChangeCookie`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

from imaguard.policy._evaluate import Object, Subject

__all__ = ["current_subject", "file_object", "fs_magic", "fs_name"]


class _Statfs(ctypes.Structure):
    _fields_ = (
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    )


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.POINTER(_Statfs))
_libc.fstatfs.restype = ctypes.c_int


def fs_magic(fd: int) -> int | None:
    """The filesystem magic (``statfs.f_type``) of an open file, or None."""
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF


_mounts_lock = threading.Lock()
_mounts: dict[int, str] = {}


def fs_name(st_dev: int) -> str | None:
    """The filesystem type name (ext4, tmpfs, ...) of the mount holding device ``st_dev``."""
    with _mounts_lock:
        if st_dev in _mounts:
            return _mounts[st_dev]
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    left, _, right = line.partition(" - ")
                    parts = left.split()
                    if len(parts) < 3 or not right:
                        continue
                    major, _, minor = parts[2].partition(":")
                    dev = os.makedev(int(major), int(minor))
                    _mounts.setdefault(dev, right.split()[0])
        except (OSError, ValueError):
            return None
        return _mounts.get(st_dev)


_magics: dict[int, int | None] = {}


def file_object(fd: int, st: os.stat_result, path: str | None, *, resolve: bool = True) -> Object:
    """The policy's view of an open file (``resolve``: compute the real path for path= rules)."""
    magic = _magics.get(st.st_dev)
    if magic is None:
        magic = fs_magic(fd)
        _magics[st.st_dev] = magic
    return Object(
        fowner=st.st_uid,
        fgroup=st.st_gid,
        fsmagic=magic,
        fsname=fs_name(st.st_dev),
        path=os.path.realpath(path) if path is not None and resolve else None,
    )


def _has_cap(bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


CAP_SETGID = 6
CAP_SETUID = 7


_subjects: dict[tuple[int, ...], Subject] = {}


def current_subject() -> Subject:
    """The calling process as a policy subject (credentials and CAP_SETUID/SETGID).

    Capabilities are read once per set of credentials (they change with them).
    """
    ids = (*os.getresuid(), *os.getresgid())
    subj = _subjects.get(ids)
    if subj is None:
        ruid, euid, suid, rgid, egid, sgid = ids
        subj = Subject(
            uid=ruid,
            euid=euid,
            suid=suid,
            gid=rgid,
            egid=egid,
            sgid=sgid,
            cap_setuid=_has_cap(CAP_SETUID),
            cap_setgid=_has_cap(CAP_SETGID),
        )
        _subjects[ids] = subj
    return subj
