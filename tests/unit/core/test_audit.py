"""The audit trail: JSON lines written by a background thread after the decision."""

from __future__ import annotations

import json
import os
import syslog
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import imaguard
from imaguard.core import AuditSink, Guard, MemoryAudit
from imaguard.policy import PolicySet, parse_policy

EXEC_SIG = "appraise func=BPRM_CHECK appraise_type=imasig\n"
# Keys the issue lists for every record: file, hook, subject, policy, rule, action, result,
# and the kernel's cause string ("rule" may be given as the rule's line).
REQUIRED = ("file", "hook", "subject", "policy", "action", "result", "cause")


def pset(text: str, name: str = "exec") -> PolicySet:
    s = PolicySet()
    s.add(name, parse_policy(text, source=name))
    return s


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_record_shape(rec: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in rec]
    assert not missing, f"record lacks {missing}: {rec}"
    assert "rule" in rec or "line" in rec, rec


def test_failed_appraisal_writes_one_json_line_with_the_contract_keys(
    tmp_path: Path, make_file: Callable[..., Path], rsa_ring: imaguard.Keyring
) -> None:
    path = tmp_path / "audit.jsonl"
    prog = make_file()
    subject = imaguard.Subject(uid=1234, euid=1234, gid=55)
    with Guard(pset("# line 1\n" + EXEC_SIG), rsa_ring, audit=AuditSink(path)) as guard:
        d = guard.process(prog, hook="BPRM_CHECK", mask="MAY_EXEC", subject=subject)
    assert d.allowed is False
    [rec] = read_lines(path)
    assert_record_shape(rec)
    assert rec["file"] == str(prog)
    assert rec["hook"] == "BPRM_CHECK"
    assert rec["subject"]["uid"] == 1234
    assert rec["subject"]["gid"] == 55
    assert rec["policy"] == "exec"
    assert rec["line"] == 2
    assert rec["action"] == "appraise"
    assert rec["result"] == "denied"
    assert rec["cause"] == "IMA-signature-required"
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_log_mode_records_the_failure_as_allowed(
    tmp_path: Path, make_file: Callable[..., Path], rsa_ring: imaguard.Keyring
) -> None:
    path = tmp_path / "audit.jsonl"
    with Guard(pset(EXEC_SIG), rsa_ring, mode="log", audit=AuditSink(path)) as guard:
        assert guard.process(make_file(), hook="BPRM_CHECK").allowed is True
    [rec] = read_lines(path)
    assert (rec["result"], rec["cause"]) == ("allowed", "IMA-signature-required")


def test_passing_decision_writes_no_failure_record(
    tmp_path: Path, signed: Path, rsa_ring: imaguard.Keyring
) -> None:
    path = tmp_path / "audit.jsonl"
    with Guard(pset(EXEC_SIG), rsa_ring, audit=AuditSink(path)) as guard:
        assert guard.process(signed, hook="BPRM_CHECK").allowed is True
    assert read_lines(path) == []


def test_state_dir_gets_an_audit_file(
    tmp_path: Path, make_file: Callable[..., Path], rsa_ring: imaguard.Keyring
) -> None:
    state = tmp_path / "state"
    with Guard(pset(EXEC_SIG), rsa_ring, state=state) as guard:
        guard.process(make_file(), hook="BPRM_CHECK")
    [rec] = read_lines(state / "audit.jsonl")
    assert_record_shape(rec)


def test_audit_action_record_has_the_contract_keys(
    tmp_path: Path, signed: Path, rsa_ring: imaguard.Keyring
) -> None:
    # The issue: "one JSON object a line (file, hook, subject, policy, rule, action,
    # result, the kernel's cause string)" - for the records of an `audit` rule as well.
    path = tmp_path / "audit.jsonl"
    with Guard(pset("audit func=BPRM_CHECK\n"), rsa_ring, audit=AuditSink(path)) as guard:
        guard.process(signed, hook="BPRM_CHECK", subject=imaguard.Subject(uid=7))
    [rec] = read_lines(path)
    assert rec["file"] == str(signed)
    assert rec["hash"].startswith("sha256:")
    assert_record_shape(rec)


def test_records_are_written_after_the_decision_by_a_background_thread(
    tmp_path: Path,
    make_file: Callable[..., Path],
    rsa_ring: imaguard.Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(path)
    gate = threading.Event()
    writers: list[str] = []
    real_write = os.write

    def gated_write(fd: int, data: bytes) -> int:
        if fd == sink._fd:
            writers.append(threading.current_thread().name)
            gate.wait(timeout=30)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", gated_write)
    guard = Guard(pset(EXEC_SIG), rsa_ring, audit=sink)
    try:
        t0 = time.perf_counter()
        d = guard.process(make_file(), hook="BPRM_CHECK")
        elapsed = time.perf_counter() - t0
        # The decision came back while the audit writer was still held at the gate.
        assert d.allowed is False
        assert elapsed < 10
        assert not gate.is_set()
        assert read_lines(path) == []
        gate.set()
        sink.flush()  # waits for the queue to drain
        [rec] = read_lines(path)
        assert rec["cause"] == "IMA-signature-required"
        assert writers == ["imaguard-audit"]
        assert threading.main_thread().name not in writers
    finally:
        gate.set()
        guard.close()


def test_close_drains_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(path)
    for i in range(500):
        sink.emit({"file": f"/f{i}", "action": "appraise"})
    sink.close()
    recs = read_lines(path)
    assert [r["file"] for r in recs] == [f"/f{i}" for i in range(500)]
    assert all("time" in r for r in recs)


def test_syslog_gets_the_same_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a, **k: None)
    monkeypatch.setattr(syslog, "syslog", lambda prio, msg: sent.append((prio, msg)))
    sink = AuditSink(None, use_syslog=True)
    sink.emit({"file": "/x", "action": "appraise", "cause": "invalid-hash"})
    sink.close()
    [(_, msg)] = sent
    assert json.loads(msg)["cause"] == "invalid-hash"


def test_memory_audit_double_collects_records(
    make_file: Callable[..., Path], rsa_ring: imaguard.Keyring
) -> None:
    sink = MemoryAudit()
    with Guard(pset(EXEC_SIG), rsa_ring, audit=sink) as guard:
        guard.process(make_file("a"), hook="BPRM_CHECK")
        guard.process(make_file("b"), hook="BPRM_CHECK")
        guard.process(make_file("c"), hook="FILE_CHECK")  # nothing applies: no record
    assert [Path(r["file"]).name for r in sink.records] == ["a", "b"]
    for rec in sink.records:
        assert_record_shape(rec)
        assert rec["action"] == "appraise"
    sink.flush()
    sink.close()
