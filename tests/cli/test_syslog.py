"""`imaguard check --syslog`: the audit trail goes to syslog as well as STATE/audit.jsonl."""

from __future__ import annotations

import json
import syslog
from pathlib import Path

import pytest

import imaguard
from helpers.clirun import run_in_process


def test_check_syslog_sends_the_trail_to_syslog_and_the_state_file(
    tmp_path: Path,
    rsa_key: imaguard.PrivateKey,
    keys_dir: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a, **k: None)
    monkeypatch.setattr(syslog, "syslog", lambda *a: sent.append(a[-1]))
    policy = tmp_path / "p.policy"
    policy.write_text("appraise func=BPRM_CHECK appraise_type=imasig\n")
    unsigned = tmp_path / "tool"
    unsigned.write_bytes(b"#!/bin/sh\n")
    state = tmp_path / "state"
    code, _, _ = run_in_process(
        capsys,
        "check",
        "--policy",
        f"p={policy}",
        "--keyring",
        keys_dir["rsa2048"],
        "--hook",
        "BPRM_CHECK",
        "--store",
        "user-xattr",
        "--state",
        state,
        "--syslog",
        unsigned,
    )
    assert code == 1
    lines = [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()]
    assert [r["cause"] for r in lines] == ["IMA-signature-required"]
    assert len(sent) == 1
    record = json.loads(sent[0])
    assert record["file"] == str(unsigned)
    assert record["action"] == "appraise"
    assert record["result"] == "denied"
