"""The batch runner of the file verbs (sign, verify, hash) and its summary line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from imaguard.appraise import SidecarStore, SignatureStore
from imaguard.appraise import _batch as batch
from imaguard.appraise._batch import BatchOutcome as Outcome
from imaguard.appraise._batch import Result
from imaguard.cli._common import EXIT_ERROR, EXIT_FAILED, EXIT_OK, err

_log = logging.getLogger("imaguard.cli")

__all__ = ["Outcome", "Result", "run_batch", "run_batch_counted", "summary", "summary_counts"]


@dataclass
class _Progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    total: int
    label: str
    enabled: bool = field(default_factory=lambda: sys.stderr.isatty())

    def __post_init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None
        if self.enabled and self.total > 1:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _walk(paths: Sequence[str], recursive: bool, follow: bool, store: SignatureStore) -> list[Any]:
    skip = (SidecarStore.suffix,) if isinstance(store, SidecarStore) else ()
    return list(batch.walk(paths, recursive=recursive, follow_symlinks=follow, skip_suffixes=skip))


def _reporter(
    progress: _Progress, echo_failures: bool, echo_ok: Callable[[Result], None] | None
) -> Callable[[Result], None]:
    def report(r: Result) -> None:
        progress.advance()
        if r.outcome is Outcome.OK:
            if echo_ok is not None:
                echo_ok(r)
        elif r.outcome is Outcome.SKIPPED:
            _log.info("skipped %s", r.message)
        elif echo_failures:
            err(r.message)

    return report


def run_batch(
    paths: Sequence[str],
    operation: batch.Operation,
    *,
    recursive: bool,
    follow: bool,
    jobs: int | None,
    store: SignatureStore,
    label: str,
    echo_failures: bool = True,
    echo_ok: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Walk PATHS and run OPERATION on each file (in worker processes), reporting as it goes."""
    entries = _walk(paths, recursive, follow, store)
    progress = _Progress(len(entries), label)
    try:
        return batch.run(
            operation, entries, jobs=jobs, on_result=_reporter(progress, echo_failures, echo_ok)
        )
    finally:
        progress.close()


def run_batch_counted(
    paths: Sequence[str],
    operation: batch.Operation,
    *,
    quick: batch.Quick | None,
    recursive: bool,
    follow: bool,
    jobs: int | None,
    store: SignatureStore,
    label: str,
) -> batch.Counted:
    """:func:`run_batch` for a verb whose passes print nothing: they are counted.

    Without a progress bar (stderr not a terminal) nothing needs the number of files in
    advance, so the walk is handed on as it goes and the work starts with its first files.
    """
    entries: Iterable[Any]
    if sys.stderr.isatty():
        entries = _walk(paths, recursive, follow, store)
        progress = _Progress(len(entries), label)
    else:
        skip = (SidecarStore.suffix,) if isinstance(store, SidecarStore) else ()
        entries = batch.walk(paths, recursive=recursive, follow_symlinks=follow, skip_suffixes=skip)
        progress = _Progress(0, label, enabled=False)

    try:
        return batch.run_counted(
            operation,
            entries,
            quick=quick,
            jobs=jobs,
            on_result=_reporter(progress, True, None),
            on_passes=progress.advance,
        )
    finally:
        progress.close()


def summary(verb: str, results: Sequence[Result], recursive: bool) -> int:
    """Print "N VERB, M failed, ..." when there is more than one file; return the exit code."""
    counts = dict.fromkeys(Outcome, 0)
    for r in results:
        counts[r.outcome] += 1
    return summary_counts(verb, counts, recursive)


def summary_counts(verb: str, counts: dict[Outcome, int], recursive: bool) -> int:
    """:func:`summary` from the counts of each outcome."""
    if recursive or counts[Outcome.ERROR] or counts[Outcome.FAILED] or sum(counts.values()) > 1:
        parts = [f"{counts[Outcome.OK]} {verb}"]
        if counts[Outcome.FAILED]:
            parts.append(f"{counts[Outcome.FAILED]} failed")
        if counts[Outcome.ERROR]:
            parts.append(f"{counts[Outcome.ERROR]} errors")
        if counts[Outcome.SKIPPED]:
            parts.append(f"{counts[Outcome.SKIPPED]} skipped")
        click.echo("imaguard: " + ", ".join(parts), err=True)
    if counts[Outcome.ERROR]:
        return EXIT_ERROR
    if counts[Outcome.FAILED]:
        return EXIT_FAILED
    return EXIT_OK
