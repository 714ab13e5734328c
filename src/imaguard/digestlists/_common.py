"""What the list makers share: the report of what was passed over, hashing a file without
following links or touching its atime, the created stamp and the source string."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass, field

from imaguard.appraise._files import FileRef, hash_fd
from imaguard.errors import FileError, FormatError, UsageError
from imaguard.formats import digestlist as dlformat
from imaguard.formats.hashalgo import HashAlgo, by_name

__all__ = ["MakeReport"]

_log = logging.getLogger("imaguard.digestlists")

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NOATIME: int = getattr(os, "O_NOATIME", 0)


@dataclass
class MakeReport:
    """What a maker did, filled in when the caller passes one (``report=``).

    ``hashed``: files whose digest went into the list. ``skipped``: (path, why) of what was
    passed over on purpose (symbolic links, FIFOs, sockets, devices, digests of another
    algorithm). ``missing``: files a package database lists that are not on disk (e.g.
    dropped by dpkg's ``path-exclude``). ``unreadable``: (path, why) of files that could not
    be hashed; each was logged as a warning.
    """

    hashed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the counts."""
        parts = [f"{self.hashed} files hashed"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (not regular files)")
        if self.missing:
            parts.append(f"{len(self.missing)} listed but missing")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable")
        return ", ".join(parts)


def algorithm_for(algorithm: str | HashAlgo) -> HashAlgo:
    """The algorithm by name, refused when this Python cannot compute it."""
    algo = algorithm if isinstance(algorithm, HashAlgo) else by_name(algorithm)
    if not algo.computable:
        raise UsageError(f"hash algorithm {algo.name} cannot be computed here")
    return algo


def created_now() -> int:
    """Now, or ``$SOURCE_DATE_EPOCH`` when it is set (reproducible lists)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return int(epoch)
    return int(time.time())


def join_source(kind: str, items: list[str]) -> str:
    """``KIND:a,b,c``, shortened to ``KIND:a,b,...(+N more)`` to fit the format's limit."""
    full = f"{kind}:" + ",".join(items)
    if len(full.encode()) <= dlformat.MAX_SOURCE:
        return full
    kept: list[str] = []
    for i, item in enumerate(items):
        tail = f",...(+{len(items) - i - 1} more)"
        candidate = f"{kind}:" + ",".join([*kept, item]) + tail
        if len(candidate.encode()) > dlformat.MAX_SOURCE:
            break
        kept.append(item)
    return f"{kind}:" + ",".join(kept) + f",...(+{len(items) - len(kept)} more)"


def hash_regular(
    path: str, algo: HashAlgo, report: MakeReport, *, shown: str | None = None
) -> bytes | None:
    """The digest of the regular file at ``path`` (never following a symbolic link), or None
    when it is not a regular file (recorded as skipped) or cannot be read (a warning,
    recorded as unreadable). ``shown`` names it in the report (default ``path``)."""
    name = shown if shown is not None else path
    try:
        try:
            fd = os.open(path, _OPEN_FLAGS | _NOATIME)
        except PermissionError:
            if not _NOATIME:
                raise
            fd = os.open(path, _OPEN_FLAGS)  # O_NOATIME needs the owner's uid or CAP_FOWNER
    except OSError as e:
        if e.errno == errno.ELOOP:
            report.skipped.append((name, "symbolic link (not followed)"))
            return None
        note_unreadable(report, name, e.strerror or str(e))
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            report.skipped.append((name, "not a regular file"))
            return None
        digest = hash_fd(FileRef(fd, name, path, st), algo)
    except FileError as e:
        note_unreadable(report, name, e.reason)
        return None
    except OSError as e:
        note_unreadable(report, name, e.strerror or str(e))
        return None
    finally:
        os.close(fd)
    report.hashed += 1
    return digest.value


def note_unreadable(report: MakeReport, name: str, why: str) -> None:
    _log.warning("%s: skipped, cannot be hashed: %s", name, why)
    report.unreadable.append((name, why))


def build(
    algo: HashAlgo,
    entries: list[tuple[bytes, str | None]],
    *,
    source: str,
    with_paths: bool,
) -> dlformat.DigestList:
    """The list of ``entries`` (any order; a digest seen twice keeps its first path)."""
    try:
        return dlformat.DigestList.build(
            algo, entries, created=created_now(), source=source, with_paths=with_paths
        )
    except FormatError as e:  # a path over 64 KiB, a digest of the wrong size: our bug
        raise FormatError(f"cannot build the digest list ({source}): {e}") from e
