"""The audit trail: one JSON object a line, to a file and/or syslog (journald reads syslog).

Records are queued when a decision is made and written by a background thread, so
writing never delays a decision; :meth:`AuditSink.close` (or ``flush``) waits for the
queue to drain. Each record carries the file, hook, subject, policy, rule, action, result
and the kernel's cause string.

The trail is logrotate-safe: when the file is renamed or removed (rotation), the writer
notices within a second and reopens ``path``; :meth:`AuditSink.reopen` does it at once.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import syslog
import threading
import time
from typing import Any

__all__ = ["AuditSink", "MemoryAudit"]

_log = logging.getLogger(__name__)


class AuditSink:
    """Writes audit records to ``path`` (JSON lines, appended) and/or syslog."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, use_syslog: bool = False
    ) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.use_syslog = use_syslog
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._fd: int | None = None
        self._checked = 0.0
        self._reopen = False
        if self.path is not None:
            self._fd = self._open(self.path)
        if use_syslog:
            syslog.openlog("imaguard", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
        self._thread = threading.Thread(target=self._run, name="imaguard-audit", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def reopen(self) -> None:
        """Reopen the file before the next record (after a rotation)."""
        self._reopen = True

    def _rotated(self) -> bool:
        """Whether ``path`` no longer names the open file (checked at most once a second)."""
        if self._reopen:
            return True
        now = time.monotonic()
        if now - self._checked < 1.0:
            return False
        self._checked = now
        assert self.path is not None
        assert self._fd is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        own = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)

    def emit(self, record: dict[str, Any]) -> None:
        record.setdefault("time", time.time())
        self._queue.put(record)

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    return
                line = json.dumps(record, sort_keys=True, default=str)
                if self._fd is not None:
                    if self.path is not None and self._rotated():
                        self._reopen = False
                        fd, self._fd = self._fd, self._open(self.path)
                        os.close(fd)
                    os.write(self._fd, (line + "\n").encode())
                if self.use_syslog:
                    syslog.syslog(syslog.LOG_INFO, line)
            except OSError as e:  # an audit write that fails must be visible, not fatal
                _log.error("audit record not written: %s", e)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MemoryAudit:
    """Keeps records in a list (the in-memory double for tests)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
