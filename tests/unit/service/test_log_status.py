"""``status`` shows the measurement log's health: a failed append is seen there, it does not
change the decision, and the next access measures again (docs/reliability.md)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imaguard.core import Outcome
from imaguard.measure import _logstore
from imaguard.service import STATUS_KEYS, Service, build_guard, load_config

from .test_reload import GOOD, FakeEnforcer, make_service

WriteConfig = Callable[[str], Path]


class FullDisk:
    """``os`` for the log store: while ``full``, the sync of written data fails with ENOSPC
    (a file system that ran out of space at writeback); cutting the file back works."""

    def __init__(self) -> None:
        self.full = True
        self._written = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        self._written = True
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        written, self._written = self._written, False
        if self.full and written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fdatasync(fd)


def test_status_shows_a_failing_log_and_its_recovery(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _, _ = make_service(write_config(GOOD))
    try:
        doc = service.status()
        assert set(STATUS_KEYS) <= set(doc)
        assert doc["log"] == {"ok": True, "error": None, "failed_appends": 0, "entries": 1}
        program = tmp_path / "program"
        program.write_bytes(b"#!/bin/sh\n")
        disk = FullDisk()
        monkeypatch.setattr(_logstore, "os", disk)
        decision = service.guard.process(program, "BPRM_CHECK")
        assert decision.allowed, "a measure-only policy allows; a failed append changes nothing"
        measure = decision.actions["measure"]
        assert measure.outcome == Outcome.FAILED
        assert measure.cause == "store_entry"
        assert "ENOSPC" in measure.detail
        log = service.status()["log"]
        assert log["ok"] is False
        assert "ENOSPC" in log["error"]
        assert log["failed_appends"] == 1
        assert log["entries"] == 1
        disk.full = False
        again = service.guard.process(program, "BPRM_CHECK")
        assert again.actions["measure"].outcome == Outcome.PASSED, "measured on the next access"
        assert service.status()["log"] == {
            "ok": True,
            "error": None,
            "failed_appends": 1,
            "entries": 2,
        }
    finally:
        service.guard.close()


def test_status_before_the_log_is_opened_says_null(write_config: WriteConfig) -> None:
    cfg = load_config(write_config(GOOD))
    guard = build_guard(cfg, open_log=False)
    try:
        service = Service(cfg, None, guard, FakeEnforcer(), supervisor_pid=1)
        assert service.status()["log"] is None
    finally:
        guard.close()
