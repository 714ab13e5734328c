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
import select
import signal
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from imaguard.appraise._files import file_kind
from imaguard.errors import Error

__all__ = ["BatchOutcome", "Counted", "Result", "WalkEntry", "run", "run_counted", "walk"]

_log = logging.getLogger(__name__)

CHUNK = 64
INLINE_LIMIT = 256
"""Batches this small run in the calling process: forking would cost more than it saves."""


class BatchOutcome(StrEnum):
    """What became of one file in a batch run (sign, verify, hash over many files).

    Not :class:`imaguard.core.Outcome`, which is a Decision's per-action outcome.
    """

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
    outcome: BatchOutcome
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
        return Result(path, BatchOutcome.ERROR, str(e))
    except OSError as e:  # pragma: no cover - operations wrap their own I/O errors
        return Result(path, BatchOutcome.ERROR, f"{path}: {e.strerror or e}")


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
            r = Result(entry.path, BatchOutcome.ERROR, f"{entry.path}: {entry.error}")
            results.append(r)
            report(r)
        elif entry.skip_reason is not None:
            r = Result(entry.path, BatchOutcome.SKIPPED, f"{entry.path}: {entry.skip_reason}")
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


# -- counted runs: a pass is a count, not an object ------------------------------------


@dataclass
class Counted:
    """The outcome of :func:`run_counted`: counts of every outcome, and the Results of
    the files that did not pass (in walk order)."""

    counts: dict[BatchOutcome, int]
    results: list[Result]


Quick = Callable[[str], bool]

NATIVE_CHUNK = 256
"""Paths per call of a native quick path (a thread takes one chunk at a time)."""


def _many_chunk(operation: Operation, quick: Any, paths: Sequence[str]) -> tuple[int, list[Result]]:
    ok, rest = quick.many(paths)
    others: list[Result] = []
    for path in rest:
        r = _safe(operation, path)
        if r.outcome is BatchOutcome.OK and r.data is None and not r.message:
            ok += 1
        else:
            others.append(r)
    return ok, others


def _counted_chunk(
    operation: Operation, quick: Quick | None, paths: Sequence[str]
) -> tuple[int, list[Result]]:
    ok = 0
    others: list[Result] = []
    for path in paths:
        if quick is not None and quick(path):
            ok += 1
            continue
        r = _safe(operation, path)
        if r.outcome is BatchOutcome.OK and r.data is None and not r.message:
            ok += 1
        else:
            others.append(r)
    return ok, others


def run_counted(
    operation: Operation,
    entries: Iterable[WalkEntry],
    *,
    quick: Quick | None = None,
    jobs: int | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_passes: Callable[[int], None] | None = None,
) -> Counted:
    """Like :func:`run`, for operations whose passes carry nothing to report.

    ``quick(path)`` answers True for a file that certainly passes (then ``operation`` is
    not called for it); otherwise ``operation`` gives the Result. An ``ok`` Result with no
    message and no data is counted, not kept; ``on_passes(n)`` hears of them in batches.
    Work is shared among forked workers that take chunks from a pipe as they finish the
    last, and send back only counts and the Results kept; with a native quick path
    (``quick.native``, see :class:`imaguard.appraise._quick.QuickPass`), among threads
    that start while the walk goes on.
    """
    report = on_result or (lambda _r: None)
    passed = on_passes or (lambda _n: None)
    counts = dict.fromkeys(BatchOutcome, 0)
    kept: list[Result] = []

    def take(ok: int, others: list[Result]) -> None:
        counts[BatchOutcome.OK] += ok
        if ok:
            passed(ok)
        for r in others:
            counts[r.outcome] += 1
            kept.append(r)
            report(r)

    def refused(entry: WalkEntry) -> Result | None:
        if entry.error is not None:
            return Result(entry.path, BatchOutcome.ERROR, f"{entry.path}: {entry.error}")
        if entry.skip_reason is not None:
            return Result(entry.path, BatchOutcome.SKIPPED, f"{entry.path}: {entry.skip_reason}")
        return None

    workers = jobs if jobs is not None else (os.cpu_count() or 1)
    if getattr(quick, "native", False):
        _run_native(operation, quick, entries, workers, refused, take)
        return Counted(counts, kept)
    todo: list[str] = []
    for entry in entries:
        r = refused(entry)
        if r is not None:
            take(0, [r])
        else:
            todo.append(entry.path)
    if workers <= 1 or len(todo) <= INLINE_LIMIT:
        for i in range(0, len(todo), CHUNK):
            take(*_counted_chunk(operation, quick, todo[i : i + CHUNK]))
        return Counted(counts, kept)
    size = max(CHUNK, len(todo) // (workers * 16))
    chunks = [(i, min(i + size, len(todo))) for i in range(0, len(todo), size)]
    for ok, others in _fork_pool(operation, quick, todo, chunks, workers):
        take(ok, others)
    return Counted(counts, kept)


def _run_native(
    operation: Operation,
    quick: Any,
    entries: Iterable[WalkEntry],
    workers: int,
    refused: Callable[[WalkEntry], Result | None],
    take: Callable[[int, list[Result]], None],
) -> None:
    """:func:`run_counted` with a quick path that runs in C without the GIL.

    Threads share the cores (no fork), and a chunk starts as soon as the walk has found
    its files, so walking and verifying overlap. Results are taken in walk order.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    pool = (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imaguard-batch")
        if workers > 1
        else None
    )
    pending: deque[Future[tuple[int, list[Result]]] | tuple[int, list[Result]]] = deque()

    def drain(block: bool) -> None:
        while pending:
            head = pending[0]
            if isinstance(head, tuple):
                take(*head)
            elif block or head.done():
                take(*head.result())
            else:
                return
            pending.popleft()

    def submit(chunk: list[str]) -> None:
        if pool is None:
            take(*_many_chunk(operation, quick, chunk))
        else:
            pending.append(pool.submit(_many_chunk, operation, quick, chunk))
            drain(block=False)

    try:
        chunk: list[str] = []
        for entry in entries:
            r = refused(entry)
            if r is None:
                chunk.append(entry.path)
                if len(chunk) >= NATIVE_CHUNK:
                    submit(chunk)
                    chunk = []
            elif pool is None:
                take(0, [r])
            else:
                pending.append((0, [r]))
        if chunk:
            submit(chunk)
        drain(block=True)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_TOKEN = 4  # bytes of a chunk number in the task pipe (a read of <= PIPE_BUF is atomic)


def _fork_pool(
    operation: Operation,
    quick: Quick | None,
    todo: list[str],
    chunks: list[tuple[int, int]],
    workers: int,
) -> Iterator[tuple[int, list[Result]]]:
    """Yield each chunk's (passes, other Results) in chunk order, computed by forked workers.

    The chunk numbers wait in a pipe; each worker reads one (atomically), does it, and
    writes its result to a pipe of its own. A chunk whose worker died unreported is done
    here, in the calling process, so a crash loses nothing.
    """
    import pickle

    if len(chunks) * _TOKEN > 60_000:  # pragma: no cover - chunks are sized far below
        raise ValueError("too many chunks for the task pipe")
    task_r, task_w = os.pipe()
    os.write(task_w, b"".join(i.to_bytes(_TOKEN, "little") for i in range(len(chunks))))
    os.close(task_w)
    procs: dict[int, int] = {}  # result pipe fd -> pid
    finished = False
    try:
        for _ in range(min(workers, len(chunks))):
            res_r, res_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child; measured through its results
                code = 0
                try:
                    os.close(res_r)
                    for fd in procs:
                        os.close(fd)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    _worker(operation, quick, todo, chunks, task_r, res_w)
                except BaseException:
                    code = 1
                os._exit(code)
            os.close(res_w)
            procs[res_r] = pid
        os.close(task_r)
        task_r = -1
        done: dict[int, tuple[int, list[Result]]] = {}
        buffers = {fd: bytearray() for fd in procs}
        open_fds = set(procs)
        nxt = 0
        while open_fds:
            ready, _, _ = select.select(list(open_fds), [], [])
            for fd in ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    open_fds.discard(fd)
                    continue
                buf = buffers[fd]
                buf += data
                while len(buf) >= 4:
                    n = int.from_bytes(buf[:4], "little")
                    if len(buf) < 4 + n:
                        break
                    # Our own forked child, over a pipe only we hold: trusted bytes.
                    index, ok, others = pickle.loads(bytes(buf[4 : 4 + n]))  # noqa: S301
                    del buf[: 4 + n]
                    done[index] = (ok, others)
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1
        for index in range(nxt, len(chunks)):
            if index in done:
                yield done.pop(index)
            else:
                _log.warning("a worker ended without chunk %d; doing it here", index)
                start, end = chunks[index]
                yield _counted_chunk(operation, quick, todo[start:end])
        finished = True
    finally:
        if task_r >= 0:
            os.close(task_r)
        for fd, pid in procs.items():
            os.close(fd)
            if not finished:  # interrupted: the workers' results are not wanted
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _worker(
    operation: Operation,
    quick: Quick | None,
    todo: list[str],
    chunks: list[tuple[int, int]],
    task_r: int,
    res_w: int,
) -> None:  # pragma: no cover - runs in a forked child
    import pickle

    while True:
        token = os.read(task_r, _TOKEN)
        if len(token) < _TOKEN:
            return
        index = int.from_bytes(token, "little")
        start, end = chunks[index]
        ok, others = _counted_chunk(operation, quick, todo[start:end])
        payload = pickle.dumps((index, ok, others), pickle.HIGHEST_PROTOCOL)
        view = memoryview(len(payload).to_bytes(4, "little") + payload)
        while view:
            view = view[os.write(res_w, view) :]
