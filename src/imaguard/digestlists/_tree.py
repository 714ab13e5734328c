"""A digest list of every regular file under a directory."""

from __future__ import annotations

import logging
import os
import stat

from imaguard.digestlists._common import (
    MakeReport,
    algorithm_for,
    build,
    hash_regular,
    note_unreadable,
)
from imaguard.errors import FileError
from imaguard.formats.digestlist import DigestList
from imaguard.formats.hashalgo import HashAlgo

__all__ = ["make_from_tree"]

_log = logging.getLogger("imaguard.digestlists")


def make_from_tree(
    root: str | os.PathLike[str],
    *,
    algorithm: str | HashAlgo = "sha256",
    with_paths: bool = True,
    source: str | None = None,
    report: MakeReport | None = None,
) -> DigestList:
    """Every regular file under ``root``, hashed with ``algorithm``.

    Symbolic links are never followed (neither to files nor to directories; ``root``
    itself may be one, since the caller named it). FIFOs, sockets and devices are passed
    over without being opened. A file or directory that cannot be read is skipped with a
    logged warning and counted in ``report.unreadable``. Paths are absolute, as the files
    are seen on this system (``root`` made absolute, not resolved). ``root`` may be a
    single regular file. The source defaults to ``tree:ROOT``.
    """
    algo = algorithm_for(algorithm)
    rep = report if report is not None else MakeReport()
    top = os.path.abspath(os.fspath(root))
    try:
        st = os.stat(top)
    except OSError as e:
        raise FileError(top, f"cannot read: {e.strerror or e}") from e
    entries: list[tuple[bytes, str | None]] = []
    if stat.S_ISREG(st.st_mode):
        digest = hash_regular(top, algo, rep)
        if digest is not None:
            entries.append((digest, top))
    elif stat.S_ISDIR(st.st_mode):
        _walk(top, algo, rep, entries)
    else:
        raise FileError(top, "is neither a directory nor a regular file")
    if not entries:
        _log.warning("%s: no regular file was hashed; the list is empty", top)
    return build(algo, entries, source=source or f"tree:{top}", with_paths=with_paths)


def _walk(
    top: str, algo: HashAlgo, rep: MakeReport, entries: list[tuple[bytes, str | None]]
) -> None:
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                listing = sorted(it, key=lambda e: e.name)
        except OSError as e:
            why = e.strerror or str(e)
            note_unreadable(rep, directory, f"directory skipped: {why}")
            continue
        subdirs: list[str] = []
        for entry in listing:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as e:  # vanished since the listing
                note_unreadable(rep, entry.path, e.strerror or str(e))
                continue
            if stat.S_ISDIR(mode):
                subdirs.append(entry.path)
            elif stat.S_ISREG(mode):
                digest = hash_regular(entry.path, algo, rep)
                if digest is not None:
                    entries.append((digest, entry.path))
            elif stat.S_ISLNK(mode):
                rep.skipped.append((entry.path, "symbolic link (not followed)"))
            else:
                rep.skipped.append((entry.path, "not a regular file"))
        stack.extend(reversed(subdirs))
