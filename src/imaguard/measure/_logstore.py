"""The measurement log store: an append-only file in the kernel's binary format.

A state directory holds:

* ``binary_runtime_measurements`` - every entry, in the kernel's binary format with
  SHA-1 template digests (the other banks' digests are recomputed from the template
  data, exactly as the kernel computes them);
* ``state.json`` - the PCR banks and the TPM (TCTI) the log is bound to;
* ``lock`` - an flock, so one process writes at a time.

**Durability.** :meth:`LogStore.append` returns only after the entry is on disk
(``fdatasync``). Concurrent appenders are committed in groups: one thread writes and
syncs everything queued, then all of them return (group commit). PCRs are extended
after the entry is durable, in log order.

**Storage failures.** When the write or the ``fdatasync`` fails (ENOSPC, EIO, ...), the
file is cut back to its last durable size (``ftruncate`` + ``fdatasync``), nothing of the
batch stays in the log or in the PCRs, and every appender of the batch gets a
:class:`~imaguard.errors.BackendError` naming the log file and the errno. The store stays
usable: once the storage works again the next append succeeds. Only when the cut itself
fails (the tail may hold half a record) does the store refuse every later append until
it is opened again, which truncates the torn tail. :meth:`LogStore.health` says whether
the last append failed, why, and how many entries failed so far.

**Start-up.** A log kept with a TPM is bound to the TPM's reset count: after a TPM
reset (a reboot) the log belongs to an earlier boot and is refused. The log is
replayed. A torn tail (a record cut short by a crash) is truncated and reported. Any
other damage, or a stored digest that does not match its template data, is refused.
With a TPM, the replay must equal the TPM's PCRs; if the TPM equals the replay of a
*prefix* (entries written but not yet extended when the process died), the missing
entries are extended now and reported. Anything else is refused.

**Duplicates.** As the kernel does, an entry whose SHA-1 template digest and PCR are
already in the log is not added again (violations always are).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaguard._fsutil import atomic_write
from imaguard.errors import (
    BackendError,
    FormatError,
    LogIntegrityError,
    TruncatedError,
    UsageError,
)
from imaguard.formats.measurelist import RawRecord, iter_binary, parse_binary, serialize_record
from imaguard.formats.template import TEMPLATES, TemplateDescriptor, TemplateEntry
from imaguard.measure._pcr import (
    DEFAULT_BANKS,
    PcrBackend,
    SoftwarePcrs,
    boot_aggregate_entry,
    check_banks,
)
from imaguard.measure._replay import Replay
from imaguard.measure._tpm import open_tpm

__all__ = ["AppendResult", "LogHealth", "LogStore", "OpenReport"]

_log = logging.getLogger(__name__)

LOG_NAME = "binary_runtime_measurements"
STATE_NAME = "state.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class AppendResult:
    """What :meth:`LogStore.append` did with one entry."""

    index: int | None
    """Position in the log, or None when the entry was a duplicate and not added."""
    added: bool
    reason: str = ""
    """Why it was not added (``hash_exists``: the kernel's duplicate rule)."""


@dataclass(frozen=True)
class OpenReport:
    """What opening the store found and did."""

    entries: int
    torn_bytes: int = 0
    re_extended: int = 0


@dataclass(frozen=True)
class LogHealth:
    """Whether appends work: what :meth:`LogStore.health` returns (the daemon's status)."""

    ok: bool
    """False from a failed append until the next one succeeds (or for good, see error)."""
    error: str | None
    """Why the last append failed; None while appends work."""
    failed_appends: int
    """Entries whose append failed since the store was opened."""
    entries: int

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "error": self.error,
            "failed_appends": self.failed_appends,
            "entries": self.entries,
        }


class _Pending:
    __slots__ = ("done", "entry", "error", "result", "values")

    def __init__(self, entry: TemplateEntry) -> None:
        self.entry = entry
        self.values: dict[str, bytes] = {}
        self.done = False
        self.result: AppendResult | None = None
        self.error: BaseException | None = None


class LogStore:
    """An append-only measurement log in a state directory (see the module doc)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        tpm: str | None = None,
        banks: Iterable[str] | None = None,
        template: str = "ima-ng",
        ima_hash: str = "sha256",
    ) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{self.dir}: cannot create the state directory: {e.strerror}") from e
        try:
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise BackendError(f"{self.dir / 'lock'}: cannot open: {_describe(e)}") from e
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise BackendError(
                f"{self.dir}: another process has this measurement log open"
            ) from None
        try:
            self._open(tpm, banks, template, ima_hash)
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------
    def _open(
        self, tpm: str | None, banks: Iterable[str] | None, template: str, ima_hash: str
    ) -> None:
        state_path = self.dir / STATE_NAME
        log_path = self.dir / LOG_NAME
        has_log = log_path.exists() and log_path.stat().st_size > 0
        state: dict[str, Any] = {}
        stored_banks: tuple[str, ...] = ()
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text())
                stored_banks = check_banks(state["banks"])
            except (OSError, ValueError, KeyError, TypeError, UsageError) as e:
                raise LogIntegrityError(f"{state_path}: unreadable state ({e})") from e
            stored_tpm = state.get("tpm")
            if tpm is None:
                tpm = stored_tpm
            elif tpm != stored_tpm and has_log:
                bound = f"TPM {stored_tpm!r}" if stored_tpm else "no TPM (software PCRs)"
                raise LogIntegrityError(f"{self.dir}: this log is bound to {bound}, not {tpm!r}")
            elif tpm != stored_tpm:
                state, stored_banks = {}, ()
        elif has_log:
            raise LogIntegrityError(f"{self.dir}: a log without {STATE_NAME}; refused")
        self.backend: PcrBackend | None = open_tpm(tpm)
        if self.backend is not None:
            self.banks = self.backend.banks()
        else:
            self.banks = stored_banks or check_banks(banks or DEFAULT_BANKS)
        if stored_banks and stored_banks != self.banks:
            raise LogIntegrityError(
                f"{self.dir}: the log was kept for banks {list(stored_banks)}, "
                f"now {list(self.banks)}"
            )
        reset_count = self.backend.reset_count() if self.backend is not None else None
        if state and reset_count is not None and state.get("tpm_reset_count") != reset_count:
            raise LogIntegrityError(
                f"{self.dir}: TPM {tpm} was reset since this log began (reset count "
                f"{state.get('tpm_reset_count')} -> {reset_count}): the log belongs to an earlier "
                "boot; start a new state directory"
            )
        if not state:
            self._write_state(
                {
                    "version": STATE_VERSION,
                    "banks": list(self.banks),
                    "tpm": tpm,
                    "tpm_reset_count": reset_count,
                }
            )
        self.tpm = tpm
        self.soft = SoftwarePcrs(self.banks)
        self._seen: set[tuple[bytes, int]] = set()
        self._count = 0
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._queue: list[_Pending] = []
        self._flushing = False
        self._failed: BaseException | None = None
        self._error: str | None = None
        self._failed_appends = 0
        self._size = 0
        path = self.dir / LOG_NAME
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise BackendError(f"{path}: cannot open: {_describe(e)}") from e
        self.report = self._replay()
        if self._count == 0:
            desc = TemplateDescriptor.lookup(template)
            self.append(boot_aggregate_entry(desc, self.backend, ima_hash))

    def _write_state(self, state: dict[str, Any]) -> None:
        path = self.dir / STATE_NAME
        try:
            atomic_write(path, (json.dumps(state, indent=2) + "\n").encode(), mode=0o644)
        except OSError as e:
            raise BackendError(f"{path}: cannot write the state: {e.strerror or e}") from e

    def _replay(self) -> OpenReport:
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        good_end = 0
        records: list[RawRecord] = []
        torn = 0
        try:
            for rec in iter_binary(data, "sha1"):
                records.append(rec)
                good_end = rec.offset + _record_size(rec, data)
        except FormatError as e:
            # Only a cut-short last record (or zeros a crash left past the data) is a
            # torn tail; anything else is damage, and nothing is truncated.
            tail = data[good_end:]
            zeros = not any(tail)
            if not zeros and (not isinstance(e, TruncatedError) or _holds_a_record(tail, records)):
                raise LogIntegrityError(
                    f"{self.dir / LOG_NAME}: {e}; the log is damaged and was left as it is"
                ) from e
            torn = len(tail)
        if torn:
            _log.warning(
                "%s: torn tail of %d bytes after %d entries (an append cut short by a crash); "
                "truncated",
                self.dir / LOG_NAME,
                torn,
                len(records),
            )
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)
        self._size = good_end
        # Every record's fields must parse (the entries are read back later); the replay
        # itself runs on the raw records, through the one replay core.
        parse_binary(data[:good_end], "sha1")
        target = None
        if self.backend is not None:
            used = sorted({r.pcr for r in records}) or [10]
            target = self.backend.read(used)
        replay = Replay(self.banks, digest_bank="sha1", expected=target)
        for rec in records:
            if not replay.step(rec):
                raise LogIntegrityError(
                    f"{self.dir / LOG_NAME}: entry {rec.index}: stored template digest does not "
                    "match its data (the log was altered)"
                )
            if not rec.violation:
                self._seen.add((rec.digest, rec.pcr))
        self.soft.values = {b: list(replay.pcrs[b]) for b in self.banks}
        self._count = len(records)
        replayed = 0
        if target is not None:
            # Where the TPM stands: the last prefix of the log whose replay equals it.
            tpm_at = replay.matched_at
            if tpm_at is None:
                raise LogIntegrityError(
                    f"{self.dir}: the log's replay does not match TPM {self.tpm} (the TPM was "
                    "reset, extended by someone else, or the log is not this TPM's); refused"
                )
            if tpm_at < len(records):
                assert self.backend is not None
                for rec in records[tpm_at:]:
                    self.backend.extend(rec.pcr, Replay.extend_values(rec, self.banks))
                    replayed += 1
                _log.info("%s: extended %d logged entries the TPM had missed", self.dir, replayed)
        return OpenReport(len(records), torn, replayed)

    # -- appending -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def append(self, entry: TemplateEntry) -> AppendResult:
        """Append one entry; returns once it is durable (and extended)."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[TemplateEntry]) -> list[AppendResult]:
        """Append entries in order; returns once all are durable. Safe from many threads."""
        items = [_Pending(e) for e in entries]
        with self._cond:
            if self._failed is not None:
                self._failed_appends += len(items)
                raise BackendError(f"{self.dir}: the log store failed earlier: {self._failed}")
            self._queue.extend(items)
            while not all(p.done for p in items):
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing = True
                batch, self._queue = self._queue, []
                self._mutex.release()
                try:
                    self._flush(batch)
                finally:
                    self._mutex.acquire()
                    self._flushing = False
                    self._cond.notify_all()
        for p in items:
            if p.error is not None:
                raise p.error
        return [p.result for p in items if p.result is not None]

    def _flush(self, batch: list[_Pending]) -> None:
        out = bytearray()
        added: list[_Pending] = []
        new_keys: list[tuple[bytes, int]] = []
        for p in batch:
            e = p.entry
            # Each bank's template digest once: the dedup key, the record and the extend.
            digests = e.template_digests(("sha1", *self.banks))
            key = (digests["sha1"], e.pcr)
            if not e.violation and key in self._seen:
                p.result = AppendResult(None, False, "hash_exists")
                continue
            if not e.violation:
                self._seen.add(key)
                new_keys.append(key)
            out += serialize_record(e, digests["sha1"])
            p.values = (
                e.extend_values(self.banks) if e.violation else {b: digests[b] for b in self.banks}
            )
            p.result = AppendResult(self._count + len(added), True)
            added.append(p)
        try:
            if out:
                _write_all(self._fd, out)
                os.fdatasync(self._fd)
        except OSError as exc:
            err = self._undo(exc, len(out), new_keys)
            self._failed_appends += len(batch)
            for p in batch:
                p.error, p.done = err, True
            return
        self._size += len(out)
        self._count += len(added)
        if self._error is not None and self._failed is None:
            _log.warning(
                "%s: appends work again (%d failed so far)",
                self.dir / LOG_NAME,
                self._failed_appends,
            )
            self._error = None
        try:
            for p in added:
                self.soft.extend(p.entry.pcr, p.values)
                if self.backend is not None:
                    self.backend.extend(p.entry.pcr, p.values)
        except BackendError as err:
            # The entries are durable; the TPM missed some. Re-opening the store extends them.
            self._failed = err
            self._error = str(err)
            for p in batch:
                p.error = err
        for p in batch:
            p.done = True

    def _undo(self, exc: OSError, size: int, keys: list[tuple[bytes, int]]) -> BackendError:
        """Take a failed batch back out: its dedup keys, and its bytes from the file.

        The file is cut back to the last durable size and synced, so no half-written
        record stays. If that fails too, the store refuses appends until it is reopened.
        """
        path = self.dir / LOG_NAME
        for key in keys:
            self._seen.discard(key)
        err = BackendError(
            f"{path}: append of {size} bytes failed: {_describe(exc)}; nothing was added"
        )
        try:
            os.ftruncate(self._fd, self._size)
            os.fdatasync(self._fd)
        except OSError as cut:
            err = BackendError(
                f"{path}: append of {size} bytes failed: {_describe(exc)}, and cutting the file "
                f"back to {self._size} bytes failed too: {_describe(cut)}; no more appends "
                "until the log is opened again (which truncates the torn tail)"
            )
            self._failed = err
        if self._error is None:
            _log.error("%s", err)
        else:
            _log.debug("%s", err)
        self._error = str(err)
        return err

    def health(self) -> LogHealth:
        """Whether appends work now, the last failure, and how many entries failed."""
        return LogHealth(
            self._error is None and self._failed is None,
            self._error,
            self._failed_appends,
            self._count,
        )

    # -- reading -------------------------------------------------------------------------
    def entries(self) -> list[TemplateEntry]:
        return [r.entry for r in parse_binary(self.raw(), "sha1")]

    def raw(self) -> bytes:
        """The log's durable bytes (never a batch being written, nor one that failed)."""
        return os.pread(self._fd, self._size, 0)

    def pcrs(self) -> dict[str, dict[int, bytes]]:
        """The PCR values the log replays to (only the PCRs the log uses)."""
        used = sorted({e.pcr for e in self.entries()})
        return {b: {i: self.soft.values[b][i] for i in used} for b in self.banks}

    def __iter__(self) -> Iterator[TemplateEntry]:
        return iter(self.entries())

    def close(self) -> None:
        for attr in ("_fd", "_lock_fd"):
            fd = getattr(self, attr, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, None)
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
            self.backend = None

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes | bytearray) -> None:
    """Write everything: a short write (the file system ran out of space part way) goes
    on, so the error that stopped it is raised with its errno."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, f"write returned {n}")
        view = view[n:]


def _describe(exc: OSError) -> str:
    """``ENOSPC (No space left on device)``: the errno's name, then its text."""
    if exc.errno is None:
        return str(exc)
    name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return f"{name} ({exc.strerror or os.strerror(exc.errno)})"


def _holds_a_record(tail: bytes, records: list[RawRecord]) -> bool:
    """True when a record header appears after the start of ``tail``.

    A torn tail is the cut-short prefix of the last write: no complete record header can
    follow the one that was cut. A bad length field in the middle of the log, though,
    makes a "truncated" record that swallows later records: refuse that one.
    """
    names = {r.template_name for r in records} | set(TEMPLATES)
    for name in names:
        raw = name.encode("ascii", "replace")
        needle = len(raw).to_bytes(4, "little") + raw
        if tail.find(needle, 4 + 20 + 1) >= 0:  # past the cut record's own header
            return True
    return False


def _record_size(rec: RawRecord, data: bytes) -> int:
    """Bytes the record takes in the binary file (its header, name and data)."""
    size = 4 + len(rec.digest) + 4 + len(rec.template_name)
    if rec.template_name == "ima":
        name_len = int.from_bytes(data[rec.offset + size + 20 : rec.offset + size + 24], "little")
        return size + 24 + name_len
    return size + 4 + len(rec.template_data)
