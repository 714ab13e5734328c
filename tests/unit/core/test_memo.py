"""The Guard's memo: a repeated request on an unchanged file returns the decision it had,
and never one that the full path would not give."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import imaguard
from imaguard.core import Guard, MemoryAudit
from imaguard.formats.measurelist import parse_binary
from imaguard.policy import PolicySet, parse_policy

EXEC = "measure func=BPRM_CHECK\nappraise func=BPRM_CHECK appraise_type=imasig\n"


def _guard(tmp_path: Path, text: str, ring: imaguard.Keyring, mode: str = "kernel") -> Guard:
    pset = PolicySet()
    pset.add("p", parse_policy(text, mode=mode))  # type: ignore[arg-type]
    return Guard(pset, ring, state=tmp_path / "state", audit=MemoryAudit())


def _audit(g: Guard) -> list[dict[str, object]]:
    assert isinstance(g.audit, MemoryAudit)
    return list(g.audit.records)


def test_a_repeated_pass_is_returned_from_the_memo_until_the_file_changes(
    tmp_path: Path, signed: Path, rsa_ring: imaguard.Keyring
) -> None:
    g = _guard(tmp_path, EXEC, rsa_ring)
    first = g.process(signed, "BPRM_CHECK")
    second = g.process(signed, "BPRM_CHECK")
    third = g.process(signed, "BPRM_CHECK")
    assert first.allowed
    assert not first.cached
    assert second.cached
    assert third.cached
    assert third is second  # the memo: the same decision, not a new one
    assert g.process(signed, "BPRM_CHECK", subject=imaguard.Subject(uid=1000)) is not second
    hits = g.cache.hits
    g.process(signed, "BPRM_CHECK")
    assert g.cache.hits == hits + 1
    # The file changes: the memo goes with the cache entry, and the change is caught.
    with signed.open("ab") as f:
        f.write(b"tampered")
    after = g.process(signed, "BPRM_CHECK")
    assert not after.allowed
    assert after.actions["appraise"].cause == "invalid-signature"
    g.close()
    # Measured once per file version: the memo did not hide a measurement.
    log = (tmp_path / "state" / "log" / "binary_runtime_measurements").read_bytes()
    names = [r.entry.fields[-1].rstrip(b"\0") for r in parse_binary(log)]
    assert names.count(os.fsencode(signed)) == 2


def test_failures_are_never_memoized_every_one_is_audited(
    tmp_path: Path, make_file: Callable[..., Path], rsa_ring: imaguard.Keyring
) -> None:
    g = _guard(tmp_path, EXEC, rsa_ring)
    prog = make_file("unsigned")
    decisions = [g.process(prog, "BPRM_CHECK") for _ in range(4)]
    assert not any(d.allowed for d in decisions)
    assert len({id(d) for d in decisions}) == 4
    failed = [r for r in _audit(g) if r["outcome"] == "failed"]
    assert len(failed) == 4
    g.close()


def test_a_reload_drops_the_memo(tmp_path: Path, signed: Path, rsa_ring: imaguard.Keyring) -> None:
    g = _guard(tmp_path, EXEC, rsa_ring)
    for _ in range(3):
        assert g.process(signed, "BPRM_CHECK").allowed
    g.policies.replace("p", parse_policy("appraise func=BPRM_CHECK fowner=4242\n"))
    g.reload()
    d = g.process(signed, "BPRM_CHECK")
    assert d.actions["appraise"].required is False
    assert d.actions["measure"].required is False
    g.close()


def test_a_measured_read_from_the_memo_still_arms_tomtou(
    tmp_path: Path, rsa_ring: imaguard.Keyring
) -> None:
    target = tmp_path / "data.conf"
    target.write_text("setting = 1\n")
    g = _guard(tmp_path, "measure func=FILE_CHECK mask=^MAY_READ\n", rsa_ring)
    for _ in range(3):
        g.process(target, "FILE_CHECK", "MAY_READ")
    assert g.process(target, "FILE_CHECK", "MAY_WRITE").extra.get("violation") == "ToMToU"
    memo = g.process(target, "FILE_CHECK", "MAY_READ")
    assert memo is g.process(target, "FILE_CHECK", "MAY_READ")
    assert g.process(target, "FILE_CHECK", "MAY_WRITE").extra.get("violation") == "ToMToU"
    g.close()


def test_path_rules_see_a_renamed_directory(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    inside = tmp_path / "guarded"
    inside.mkdir()
    prog = inside / "tool"
    prog.write_bytes(b"#!/bin/sh\n")
    text = f"appraise func=BPRM_CHECK path_prefix={inside} appraise_type=imasig\n"
    g = _guard(tmp_path, text, rsa_ring, mode="imaguard")
    for _ in range(3):
        assert not g.process(prog, "BPRM_CHECK").allowed  # unsigned, under the prefix
    moved = tmp_path / "elsewhere"
    os.rename(inside, moved)
    os.symlink(moved, inside)  # the old name still reaches the file, by another real path
    d = g.process(prog, "BPRM_CHECK")
    assert d.actions["appraise"].required is False
    g.close()
