"""The audit trail survives logrotate: a renamed file is noticed and the path reopened."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from imaguard.core import AuditSink


def test_rename_then_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(path)
    sink.emit({"n": 1})
    sink.flush()
    os.rename(path, tmp_path / "audit.jsonl.1")
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        sink.emit({"n": 2})
        sink.flush()
        time.sleep(0.2)
    sink.close()
    first = (tmp_path / "audit.jsonl.1").read_text().splitlines()[0]
    assert json.loads(first)["n"] == 1
    assert json.loads(path.read_text().splitlines()[0])["n"] == 2


def test_explicit_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(path)
    os.rename(path, tmp_path / "old")
    sink.reopen()
    sink.emit({"n": 3})
    sink.close()
    assert json.loads(path.read_text())["n"] == 3
    assert (tmp_path / "old").read_text() == ""
