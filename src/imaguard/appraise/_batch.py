"""Many files at once: walk trees safely and run one operation over them on all cores.

The walk uses ``os.scandir`` and the directory entry's type, so FIFOs, sockets and
devices are skipped **without being opened** (no hang), and symbolic links are not
followed unless asked. Work is split into chunks and run in forked worker processes
(the key and keyring are inherited, never pickled); results come back in chunk order
so a caller can show progress and a summary. Small batches run in-process.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from imaguard.appraise._files import file_kind
from imaguard.errors import Error

__all__ = ["Outcome", "Result", "WalkEntry", "run", "walk"]

_log = logging.getLogger(__name__)

CHUNK = 64
INLINE_LIMIT = 256
"""Batches this small run in the calling process: forking would cost more than it saves."""


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    """The file was examined and did not verify."""
    ERROR = "error"
    """The file could not be processed (unreadable, changed while hashed, ...)."""
    SKIPPED = "skipped"
    """Not a regular file, or a link not followed; never opened."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class WalkEntry:
    path: str
    skip_reason: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Result:
    path: str
    outcome: Outcome
    message: str = ""
    data: dict[str, Any] | None = None


def walk(
    paths: Iterable[str],
    *,
    recursive: bool,
    follow_symlinks: bool = False,
    skip_suffixes: tuple[str, ...] = (),
) -> Iterator[WalkEntry]:
    """Yield each file to process; non-regular files come with a reason to skip them.

    A path given explicitly is yielded as is (the operation reports what it is); a
    directory without ``recursive`` comes back as an error entry.
    """
    for top in paths:
        try:
            st = os.stat(top) if follow_symlinks or not os.path.islink(top) else os.lstat(top)
        except OSError:
            yield WalkEntry(top)  # let the operation report the error with the file name
            continue
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                yield WalkEntry(top, error="is a directory (use -r to walk it)")
                continue
            yield from _walk_dir(top, follow_symlinks, skip_suffixes, set())
        else:
            yield WalkEntry(top)


def _walk_dir(
    top: str, follow: bool, skip_suffixes: tuple[str, ...], seen: set[tuple[int, int]]
) -> Iterator[WalkEntry]:
    try:
        st = os.stat(top)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return  # a symlink loop when following links
        seen.add(key)
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield WalkEntry(top, error=f"cannot list directory: {e.strerror or e}")
        return
    for entry in entries:
        try:
            if entry.is_symlink() and not follow:
                yield WalkEntry(entry.path, "a symbolic link (not followed)")
            elif entry.is_dir(follow_symlinks=follow):
                yield from _walk_dir(entry.path, follow, skip_suffixes, seen)
            elif entry.is_file(follow_symlinks=follow):
                if skip_suffixes and entry.name.endswith(skip_suffixes):
                    continue
                yield WalkEntry(entry.path)
            else:
                mode = entry.stat(follow_symlinks=follow).st_mode
                yield WalkEntry(entry.path, f"{file_kind(mode)}, not a regular file")
        except OSError as e:
            yield WalkEntry(entry.path, error=f"cannot stat: {e.strerror or e}")


Operation = Callable[[str], Result]

_operation: Operation | None = None


def _run_chunk(paths: Sequence[str]) -> list[Result]:
    op = _operation
    if op is None:  # pragma: no cover - set before the pool forks
        raise RuntimeError("worker started without an operation")
    return [_safe(op, p) for p in paths]


def _safe(op: Operation, path: str) -> Result:
    try:
        return op(path)
    except Error as e:
        return Result(path, Outcome.ERROR, str(e))
    except OSError as e:  # pragma: no cover - operations wrap their own I/O errors
        return Result(path, Outcome.ERROR, f"{path}: {e.strerror or e}")


def run(
    operation: Operation,
    entries: Iterable[WalkEntry],
    *,
    jobs: int | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run ``operation`` on every entry (in parallel when worth it); return all results.

    ``operation`` must turn every expected failure into a Result; an imaguard Error it
    raises becomes an ``error`` Result, so one bad file never stops the batch.
    """
    global _operation
    report = on_result or (lambda _r: None)
    results: list[Result] = []
    todo: list[str] = []
    for entry in entries:
        if entry.error is not None:
            r = Result(entry.path, Outcome.ERROR, f"{entry.path}: {entry.error}")
            results.append(r)
            report(r)
        elif entry.skip_reason is not None:
            r = Result(entry.path, Outcome.SKIPPED, f"{entry.path}: {entry.skip_reason}")
            results.append(r)
            report(r)
        else:
            todo.append(entry.path)
    workers = jobs if jobs is not None else (os.cpu_count() or 1)
    if workers <= 1 or len(todo) <= INLINE_LIMIT:
        for path in todo:
            r = _safe(operation, path)
            results.append(r)
            report(r)
        return results
    import multiprocessing  # only a large batch pays for these imports
    from concurrent.futures import ProcessPoolExecutor

    size = max(CHUNK, len(todo) // (workers * 8))
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    _operation = operation
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for chunk_results in pool.map(_run_chunk, chunks):
                for r in chunk_results:
                    results.append(r)
                    report(r)
    finally:
        _operation = None
    return results
