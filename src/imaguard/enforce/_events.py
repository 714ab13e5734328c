"""From a fanotify permission event to the Guard's (hook, mask, subject).

Mapping:

* ``FAN_OPEN_EXEC_PERM`` -> ``BPRM_CHECK`` with ``MAY_EXEC``.
* ``FAN_OPEN_PERM`` -> ``FILE_CHECK`` with the mask of the opener's open flags, except:

  a. the opener's exe is the dynamic loader (``ld-linux*.so*``, ``ld.so*``, ``ld-musl*``,
     ``ld64.so*``) and the file is an ELF object: ``ld.so ./prog`` maps a program without
     an exec, so it is appraised as one (``BPRM_CHECK``, ``MAY_EXEC``, reason
     ``loader-exec``);
  b. the opener's exe matches a configured interpreter glob and the file is a regular,
     non-ELF file opened read-only: ``sh script`` / ``python3 file.py`` run code without an
     exec. User space cannot tell the script from any other file the interpreter reads, so
     the rule is the simple safe one: *every* non-ELF file an interpreter opens read-only on
     a watched filesystem is appraised as exec (``BPRM_CHECK``, reason
     ``interpreter-script``), except paths matching the ``script_exempt`` globs (by default
     the Python standard library directories). Data files read by interpreted programs on a
     watched filesystem therefore need what the policy demands of programs;
  c. an ELF shared object (``ET_DYN``) opened read-only by any other process is appraised as
     ``MMAP_CHECK`` with ``MAY_EXEC`` (reason ``shared-object``): ``LD_PRELOAD``, ``dlopen``
     and the loader's own library loads. Position-independent executables are ``ET_DYN``
     too, so reading one (``cp``) is appraised the same way.

The opener's open flags: fanotify reports no open flags, and the event fd's own flags
(``/proc/self/fdinfo``) are the group's ``event_f_flags``, not the opener's. The opener is
blocked inside its ``open``/``openat``/``openat2``/``creat`` call while the event waits, so
its arguments are read from ``/proc/<pid>/task/<tid>/syscall`` (proc(5)); for ``openat2`` the
flags come from the ``struct open_how`` in the task's memory. When no task of the process
is in such a call (an open made by the kernel on the process's behalf, io_uring, an
unknown architecture), the access mode is unknown: the decision uses ``MAY_READ`` and the
engine treats the open as a possible write (no ignore mark, existing marks dropped).

The subject is read from ``/proc/<pid>`` and then checked to still be the same process:
with ``FAN_REPORT_PIDFD`` by ``pidfd_send_signal(pidfd, 0)`` after the reads, otherwise by
comparing the process start time (``/proc/<pid>/stat`` field 22) before and after. The
object is only ever read through the event's fd (never re-opened by path); the path from
``readlink(/proc/self/fd/N)`` is for messages and path rules only.
"""

from __future__ import annotations

import fnmatch
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass

from imaguard.enforce._fanotify import FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM, pidfd_alive
from imaguard.errors import Error
from imaguard.policy import Subject

MAY_EXEC = 0x1
MAY_WRITE = 0x2
MAY_READ = 0x4
MAY_APPEND = 0x8

DEFAULT_INTERPRETERS: tuple[str, ...] = tuple(
    f"{prefix}/{name}"
    for prefix in ("/usr/bin", "/bin", "/usr/local/bin")
    for name in (
        "python*",
        "pypy*",
        "sh",
        "dash",
        "bash",
        "zsh",
        "ksh*",
        "mksh",
        "busybox",
        "perl*",
        "ruby*",
        "php*",
        "node*",
        "lua*",
        "tclsh*",
        "gawk",
        "mawk",
    )
)
"""fnmatch globs of interpreter executables (the resolved ``/proc/<pid>/exe`` path)."""

DEFAULT_SCRIPT_EXEMPT: tuple[str, ...] = ("/usr/lib/python*/*", "/usr/local/lib/python*/*")

LOADER_GLOBS = ("ld-linux*.so*", "ld.so*", "ld-musl*", "ld64.so*")

ELF_MAGIC = b"\x7fELF"
ET_EXEC = 2
ET_DYN = 3

# (open-like syscalls -> index of the flags argument); "how" = openat2's struct open_how.
_OPEN_SYSCALLS: dict[str, dict[int, int | str]] = {
    "x86_64": {2: 1, 257: 2, 85: "creat", 437: "how", 59: "exec", 322: "exec"},
    "aarch64": {56: 2, 437: "how", 221: "exec", 281: "exec"},
}
_SYSCALLS = _OPEN_SYSCALLS.get(platform.machine(), {})


def open_mask(flags: int) -> int:
    """The kernel's access mask for open ``flags``: accmode, ``O_TRUNC`` and ``O_APPEND``."""
    acc = flags & os.O_ACCMODE
    mask = {os.O_RDONLY: MAY_READ, os.O_WRONLY: MAY_WRITE, os.O_RDWR: MAY_READ | MAY_WRITE}.get(
        acc, MAY_READ | MAY_WRITE
    )
    if flags & os.O_TRUNC:
        mask |= MAY_WRITE
    if flags & os.O_APPEND:
        mask |= MAY_APPEND
    return mask


def writes(mask: int) -> bool:
    return bool(mask & (MAY_WRITE | MAY_APPEND))


def parse_syscall_line(line: str, mem: str | None = None) -> int | None:
    """Open flags from one ``/proc/.../syscall`` line; None when it is not an open."""
    parts = line.split()
    if not parts or not parts[0].lstrip("-").isdigit():
        return None
    kind = _SYSCALLS.get(int(parts[0]))
    if kind is None:
        return None
    if kind == "exec":
        return os.O_RDONLY
    if kind == "creat":
        return os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if kind == "how":
        if mem is None or len(parts) < 4:
            return None
        try:
            with open(mem, "rb", buffering=0) as f:
                f.seek(int(parts[3], 16))
                raw = f.read(8)
        except (OSError, ValueError, OverflowError):
            return None
        return int.from_bytes(raw, "little") if len(raw) == 8 else None
    assert isinstance(kind, int)
    if len(parts) <= kind + 1:
        return None
    try:
        return int(parts[kind + 1], 16)
    except ValueError:
        return None


def opener_mask(pid: int) -> int | None:
    """The union of the access masks of every task of ``pid`` blocked in an open; None if none."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    mask: int | None = None
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/syscall", encoding="ascii", errors="replace") as f:
                line = f.read()
        except OSError:
            continue
        flags = parse_syscall_line(line, f"{base}/mem")
        if flags is not None:
            mask = open_mask(flags) | (mask or 0)
    return mask


@dataclass(frozen=True)
class EventSubject:
    """Who raised the event: the policy subject plus what messages and rules need."""

    pid: int
    subject: Subject
    exe: str | None
    comm: str | None


class SubjectGoneError(Error):
    """The process that raised the event is gone or was replaced while it was read."""


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    return stat.rpartition(")")[2].split()[19]  # field 22, counted after the comm


def read_subject(pid: int, pidfd: int | None) -> EventSubject:
    """The subject of ``pid`` read race-safely (see the module docstring); SubjectGoneError."""
    try:
        before = _start_time(pid) if pidfd is None or pidfd < 0 else ""
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            status = f.read()
        try:
            exe: str | None = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = None
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                comm: str | None = f.read().rstrip("\n")
        except OSError:
            comm = None
        if pidfd is not None and pidfd >= 0:
            if not pidfd_alive(pidfd):
                raise SubjectGoneError(f"pid {pid} exited while its event was read")
        elif _start_time(pid) != before:
            raise SubjectGoneError(f"pid {pid} was replaced while its event was read")
    except (OSError, IndexError) as e:
        raise SubjectGoneError(f"pid {pid}: cannot read /proc: {e}") from e
    fields: dict[str, list[str]] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    try:
        uid, euid, suid = (int(x) for x in fields["Uid"][:3])
        gid, egid, sgid = (int(x) for x in fields["Gid"][:3])
        capeff = int(fields.get("CapEff", ["0"])[0], 16)
    except (KeyError, ValueError) as e:
        raise SubjectGoneError(f"pid {pid}: unreadable /proc/{pid}/status") from e
    subject = Subject(
        uid=uid,
        euid=euid,
        suid=suid,
        gid=gid,
        egid=egid,
        sgid=sgid,
        cap_setuid=bool(capeff >> 7 & 1),
        cap_setgid=bool(capeff >> 6 & 1),
    )
    return EventSubject(pid, subject, exe, comm)


def elf_type(fd: int) -> int | None:
    """``e_type`` of the ELF file behind ``fd`` (ET_EXEC, ET_DYN, ...), or None if not ELF."""
    try:
        head = os.pread(fd, 18, 0)
    except OSError:
        return None
    if len(head) < 18 or head[:4] != ELF_MAGIC:
        return None
    if head[5] == 2:
        return int.from_bytes(head[16:18], "big")
    return int.from_bytes(head[16:18], "little")


def is_loader(exe: str | None) -> bool:
    """True when ``exe`` is the dynamic loader (ld-linux*.so*, ld.so*, ld-musl*)."""
    if not exe:
        return False
    base = os.path.basename(exe)
    return any(fnmatch.fnmatchcase(base, g) for g in LOADER_GLOBS)


def matches(path: str | None, globs: Sequence[str]) -> bool:
    return path is not None and any(fnmatch.fnmatchcase(path, g) for g in globs)


@dataclass(frozen=True)
class Classified:
    """The hook, mask and reason an event is decided under; ``write`` when the open may write."""

    hook: str
    mask: int
    reason: str
    write: bool
    elf: int | None = None


def classify(
    event_mask: int,
    open_bits: int | None,
    exe: str | None,
    elf: int | None,
    path: str | None,
    interpreters: Sequence[str],
    script_exempt: Sequence[str] = DEFAULT_SCRIPT_EXEMPT,
) -> Classified:
    """The mapping of the module docstring. ``open_bits`` None: the access mode is unknown."""
    if event_mask & FAN_OPEN_EXEC_PERM:
        return Classified("BPRM_CHECK", MAY_EXEC, "exec", False, elf)
    if not event_mask & FAN_OPEN_PERM:
        return Classified("FILE_CHECK", MAY_READ, "other", True, elf)
    bits = open_bits if open_bits is not None else MAY_READ
    write = open_bits is None or writes(open_bits)
    if not write:
        if elf is not None and is_loader(exe):
            return Classified("BPRM_CHECK", MAY_EXEC, "loader-exec", False, elf)
        if elf == ET_DYN:
            return Classified("MMAP_CHECK", MAY_EXEC, "shared-object", False, elf)
        if elf is None and matches(exe, interpreters) and not matches(path, script_exempt):
            return Classified("BPRM_CHECK", MAY_EXEC, "interpreter-script", False, elf)
    return Classified("FILE_CHECK", bits, "open", write, elf)


def candidate_hooks(elf: int | None) -> tuple[tuple[str, int], ...]:
    """Every (hook, mask) a read-only open of such a file can be decided under."""
    if elf is None:
        return (("FILE_CHECK", MAY_READ), ("BPRM_CHECK", MAY_EXEC))
    if elf == ET_DYN:
        return (("FILE_CHECK", MAY_READ), ("BPRM_CHECK", MAY_EXEC), ("MMAP_CHECK", MAY_EXEC))
    return (("FILE_CHECK", MAY_READ), ("BPRM_CHECK", MAY_EXEC))


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"<fd {fd}>"
