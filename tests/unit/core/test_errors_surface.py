"""What the Guard cannot do is said in its Decision: a ToMToU record the log refused, a
measurement made without the stored value; fix mode reports the value type it wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import imaguard
from imaguard.appraise import MemoryStore
from imaguard.core import Guard, MemoryAudit
from imaguard.errors import BackendError, StoreError
from imaguard.policy import PolicySet, parse_policy


def _guard(tmp_path: Path, text: str, ring: imaguard.Keyring, **kw: Any) -> Guard:
    pset = PolicySet()
    pset.add("p", parse_policy(text))
    return Guard(pset, ring, state=tmp_path / "state", audit=MemoryAudit(), **kw)


def test_a_tomtou_violation_the_log_refused_is_in_the_decision(
    tmp_path: Path, rsa_ring: imaguard.Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "data.conf"
    target.write_text("setting = 1\n")
    g = _guard(tmp_path, "measure func=FILE_CHECK mask=^MAY_READ\n", rsa_ring, store=MemoryStore())
    assert g.process(target, "FILE_CHECK", "MAY_READ").violation_error is None

    def refuse(entry: object) -> None:
        raise BackendError("the log is gone")

    monkeypatch.setattr(g.log, "append", refuse)
    write = g.process(target, "FILE_CHECK", "MAY_WRITE")
    assert write.extra.get("violation") == "ToMToU"
    assert write.violation_error == "the log is gone"
    assert write.to_dict()["violation_error"] == "the log is gone"
    monkeypatch.undo()
    g.close()


def test_a_recorded_violation_has_no_error(tmp_path: Path, rsa_ring: imaguard.Keyring) -> None:
    target = tmp_path / "data.conf"
    target.write_text("setting = 1\n")
    g = _guard(tmp_path, "measure func=FILE_CHECK mask=^MAY_READ\n", rsa_ring, store=MemoryStore())
    g.process(target, "FILE_CHECK", "MAY_READ")
    write = g.process(target, "FILE_CHECK", "MAY_WRITE")
    assert write.extra.get("violation") == "ToMToU"
    assert write.violation_error is None
    assert "violation_error" not in write.to_dict()
    g.close()


@pytest.mark.parametrize(("ima_hash", "kind"), [("sha1", 0x01), ("md5", 0x01), ("sha256", 0x04)])
def test_fix_mode_reports_the_value_type_it_wrote(
    tmp_path: Path, rsa_ring: imaguard.Keyring, ima_hash: str, kind: int
) -> None:
    # The kernel's ima_fix_xattr writes IMA_XATTR_DIGEST (0x01) for algorithm ids up to
    # HASH_ALGO_SHA1 (md5, sha1) and IMA_XATTR_DIGEST_NG (0x04) above
    # (security/integrity/ima/ima_appraise.c).
    prog = tmp_path / "prog"
    prog.write_bytes(b"#!/bin/sh\n")
    store = MemoryStore()
    g = _guard(
        tmp_path, "appraise func=BPRM_CHECK\n", rsa_ring, store=store, mode="fix", ima_hash=ima_hash
    )
    d = g.process(prog, "BPRM_CHECK")
    g.close()
    assert d.actions["appraise"].outcome == "passed"
    written = store.values[str(prog)]
    assert written[0] == kind
    assert d.verdict is not None
    assert d.verdict.value_type == written[0]


class _Unreadable(MemoryStore):
    def read(self, ref: Any) -> bytes | None:
        raise StoreError(ref.name, "cannot read security.ima: Permission denied")


def test_a_measurement_without_the_unreadable_value_says_so(
    tmp_path: Path, rsa_ring: imaguard.Keyring
) -> None:
    prog = tmp_path / "prog"
    prog.write_bytes(b"#!/bin/sh\n")
    g = _guard(
        tmp_path, "measure func=BPRM_CHECK template=ima-sig\n", rsa_ring, store=_Unreadable()
    )
    d = g.process(prog, "BPRM_CHECK")
    g.close()
    m = d.actions["measure"]
    assert m.outcome == "passed"
    assert m.detail == (
        "measured without the stored value: cannot read security.ima: Permission denied"
    )
