"""The enforcement daemon end to end: exec decided, status, audit, reload, worker crash."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from .conftest import Daemon, cli, run

pytestmark = pytest.mark.root

LDSO = "/lib64/ld-linux-x86-64.so.2"


def test_signed_runs_unsigned_refused_counted_and_audited(daemon_env: Daemon) -> None:
    d = daemon_env
    d.start()
    doc = d.status()
    assert doc["ready"] is True
    assert doc["mode"] == "enforce"
    assert doc["watched"] == [str(d.mnt)]
    assert doc["policies"] == [
        {"name": "exec-guard", "owner": "admin", "lock": "open", "version": 1}
    ]
    assert run(d.mnt / "good") == 0
    assert run(d.mnt / "evil") == 126
    if os.path.exists(LDSO):
        r = subprocess.run([LDSO, str(d.mnt / "evil")], capture_output=True, timeout=30)
        assert r.returncode != 0
        assert b"Operation not permitted" in r.stderr
    doc = d.status()
    assert doc["decisions"]["denied"] >= 2
    assert doc["decisions"]["allowed"] >= 1
    records = []
    for _ in range(50):
        records = [r for r in d.audit() if r.get("result") == "denied"]
        if records:
            break
        time.sleep(0.1)
    denied = records[0]
    assert denied["policy"] == "exec-guard"
    assert denied["rule"].startswith("appraise func=BPRM_CHECK")
    assert denied["cause"] == "IMA-signature-required"
    assert denied["file"].endswith("/evil")


def test_bad_reload_keeps_enforcing(daemon_env: Daemon) -> None:
    d = daemon_env
    d.start()
    d.config.write_text(d.config.read_text().replace('lock = "open"', 'lock = "loose"'))
    os.kill(d.status()["pid"], signal.SIGHUP)
    for _ in range(100):
        doc = d.status()
        if doc["last_reload_error"]:
            break
        time.sleep(0.05)
    assert "policy[0].lock" in doc["last_reload_error"]
    assert doc["ready"] is True
    assert run(d.mnt / "evil") == 126
    assert run(d.mnt / "good") == 0
    # a good config then reloads: the new policy shows in status
    d.write_config('\n[[policy]]\nname = "attest"\nowner = "keylime"\nbuiltin = "tcb"\n')
    os.kill(d.status()["pid"], signal.SIGHUP)
    for _ in range(100):
        doc = d.status()
        if doc["reloads"] == 1:
            break
        time.sleep(0.05)
    assert [p["name"] for p in doc["policies"]] == ["exec-guard", "attest"]
    assert doc["last_reload_error"] is None
    assert run(d.mnt / "evil") == 126


def test_worker_crash_an_exec_during_the_restart_waits_and_is_denied(daemon_env: Daemon) -> None:
    d = daemon_env
    d.start()
    assert run(d.mnt / "good") == 0
    worker = d.status()["worker_pid"]
    os.kill(worker, signal.SIGKILL)
    started = time.monotonic()
    assert run(d.mnt / "evil") == 126  # raised while no worker reads: held, then denied
    waited = time.monotonic() - started
    doc = d.wait_ready(restarts=1)
    assert doc["worker_pid"] != worker
    assert doc["restarts"] == 1
    assert run(d.mnt / "good") == 0
    assert run(d.mnt / "evil") == 126
    print(f"restart: exec waited {waited * 1000:.0f} ms; gap {doc['last_restart_gap_ms']} ms")


def test_permissive_allows_but_counts(daemon_env: Daemon) -> None:
    d = daemon_env
    d.start("--permissive")
    doc = d.status()
    assert doc["mode"] == "permissive"
    assert run(d.mnt / "evil") == 0
    assert any(str(r.get("file", "")).endswith("/evil") for r in _wait_audit(d))


def _wait_audit(d: Daemon) -> list[dict[str, object]]:
    for _ in range(50):
        records = d.audit()
        if records:
            return records
        time.sleep(0.1)
    return []


def test_orderly_stop(daemon_env: Daemon) -> None:
    d = daemon_env
    d.start()
    doc = d.status()
    os.kill(doc["pid"], signal.SIGTERM)
    assert d.proc is not None
    assert d.proc.wait(timeout=20) == 0
    assert not d.sock.exists()
    assert run(d.mnt / "evil") == 0  # no daemon: nothing is enforced any more


def test_bad_config_at_start_names_the_key(daemon_env: Daemon) -> None:
    d = daemon_env
    d.config.write_text("workers = 0\n" + d.config.read_text())
    r = cli("daemon", "--foreground", "--config", str(d.config))
    assert r.returncode == 2
    assert f"imaguard: {d.config}: workers: must be between 1 and 64" in r.stderr
