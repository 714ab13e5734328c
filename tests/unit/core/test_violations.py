"""ToMToU violations and fail_securely in the Guard (spec kernel-ima.md §4.6, §3.8 step 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

import imaguard
from imaguard.core import Guard, MemoryAudit
from imaguard.core import _guard as guard_module
from imaguard.formats.measurelist import LogRecord, parse_binary
from imaguard.measure import records_from_binary, verify_records
from imaguard.policy import PolicySet, builtin_policy, parse_policy


def _guard(tmp_path: Path, text: str, ring: imaguard.Keyring, **kw: object) -> Guard:
    pset = PolicySet()
    pset.add("p", parse_policy(text))
    return Guard(pset, ring, state=tmp_path / "state", audit=MemoryAudit(), **kw)  # type: ignore[arg-type]


def _log_entries(tmp_path: Path) -> list[LogRecord]:
    data = (tmp_path / "state" / "log" / "binary_runtime_measurements").read_bytes()
    return parse_binary(data)


def test_write_open_after_a_measured_read_is_a_tomtou_violation(
    tmp_path: Path, rsa_ring: imaguard.Keyring
) -> None:
    target = tmp_path / "data.conf"
    target.write_text("setting = 1\n")
    g = _guard(tmp_path, "measure func=FILE_CHECK mask=^MAY_READ\n", rsa_ring)
    first = g.process(target, "FILE_CHECK", "MAY_READ")
    assert first.actions["measure"].outcome == "passed"
    assert "violation" not in first.extra
    write = g.process(target, "FILE_CHECK", "MAY_WRITE")
    assert write.extra.get("violation") == "ToMToU"
    # Once per measured read: a second write open emits nothing more.
    again = g.process(target, "FILE_CHECK", "MAY_WRITE")
    assert "violation" not in again.extra
    g.close()
    records = _log_entries(tmp_path)
    violations = [r for r in records if r.entry.violation]
    assert len(violations) == 1
    assert violations[0].digest == b"\0" * 20
    assert violations[0].entry.name == str(target.resolve()).encode()
    # The log replays with the 0xFF extend, and the verifier reports the violation.
    data = (tmp_path / "state" / "log" / "binary_runtime_measurements").read_bytes()
    recs, problem = records_from_binary(data)
    assert problem is None
    result = verify_records(recs)
    assert [f.code for f in result.findings] == ["violation"]
    assert verify_records(recs, ignore_violations=True).ok


def test_a_write_open_without_a_measured_read_is_no_violation(
    tmp_path: Path, rsa_ring: imaguard.Keyring
) -> None:
    target = tmp_path / "data.conf"
    target.write_text("x\n")
    g = _guard(tmp_path, "measure func=FILE_CHECK mask=^MAY_READ\n", rsa_ring)
    d = g.process(target, "FILE_CHECK", "MAY_WRITE")
    assert "violation" not in d.extra
    g.close()


def test_no_measure_rules_no_violations(tmp_path: Path, rsa_ring: imaguard.Keyring) -> None:
    target = tmp_path / "data.conf"
    target.write_text("x\n")
    g = _guard(tmp_path, "audit func=FILE_CHECK\n", rsa_ring)
    g.process(target, "FILE_CHECK", "MAY_READ")
    d = g.process(target, "FILE_CHECK", "MAY_WRITE")
    assert "violation" not in d.extra
    g.close()


def test_fail_securely_fails_signatures_on_unverifiable_filesystems(
    tmp_path: Path,
    rsa_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "tool"
    target.write_bytes(b"#!/bin/sh\necho hi\n")
    imaguard.sign_file(target, rsa_key, store="user-xattr")
    pset = PolicySet()
    b = builtin_policy("fail_securely")
    pset.add(
        "secure",
        parse_policy("appraise func=BPRM_CHECK appraise_type=imasig\n"),
        fail_securely=b.fail_securely,
    )
    g = Guard(pset, rsa_ring, store="user-xattr", audit=MemoryAudit())
    assert g.process(target, "BPRM_CHECK").allowed
    # The same file on a filesystem whose signatures cannot be trusted (FUSE).
    monkeypatch.setattr(guard_module, "fs_magic_of", lambda ref: guard_module.FUSE_SUPER_MAGIC)
    g.reload()
    d = g.process(target, "BPRM_CHECK")
    assert not d.allowed
    assert d.actions["appraise"].cause == "unverifiable-signature"
    g.close()


def test_without_fail_securely_fuse_signatures_still_verify(
    tmp_path: Path,
    rsa_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "tool"
    target.write_bytes(b"#!/bin/sh\necho hi\n")
    imaguard.sign_file(target, rsa_key, store="user-xattr")
    pset = PolicySet()
    pset.add("plain", parse_policy("appraise func=BPRM_CHECK appraise_type=imasig\n"))
    g = Guard(pset, rsa_ring, store="user-xattr", audit=MemoryAudit())
    monkeypatch.setattr(guard_module, "fs_magic_of", lambda ref: guard_module.FUSE_SUPER_MAGIC)
    assert g.process(target, "BPRM_CHECK").allowed
    g.close()
