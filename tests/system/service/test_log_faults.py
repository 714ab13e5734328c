"""The daemon when its measurement log's file system is full: it keeps enforcing, audits
every measurement that could not be stored, says so in ``status``, and measures again once
space is back (docs/reliability.md).

The log directory (STATE/log) is a small ext4 in a loop-mounted image (helpers.smallfs;
tmpfs where loop devices are missing); the audit trail stays in STATE, elsewhere. The
policy appraises and measures every exec on the watched tmpfs.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import imaguard
from helpers.smallfs import small_fs
from imaguard.formats.measurelist import parse_binary

from .conftest import Daemon, cli, run

pytestmark = pytest.mark.root


def _copies(d: Daemon, prefix: str, n: int, *, signed: bool) -> list[Path]:
    key = imaguard.load_private_key(d.base / "keys" / "private.pem")
    out = []
    for i in range(n):
        p = d.mnt / f"{prefix}{i}"
        shutil.copy("/bin/true", p)
        if signed:
            imaguard.sign_file(p, key, "sha256")
        out.append(p)
    return out


def _audit_of(d: Daemon, path: Path) -> list[dict[str, Any]]:
    """The audit records of ``path``'s measure action (polled: the trail is written behind)."""
    records: list[dict[str, Any]] = []
    for _ in range(50):
        records = [
            r for r in d.audit() if r.get("file") == str(path) and r.get("action") == "measure"
        ]
        if records:
            break
        time.sleep(0.1)
    return records


def _measured_names(log_dir: Path) -> list[str]:
    data = (log_dir / "binary_runtime_measurements").read_bytes()
    return [r.entry.name.decode() for r in parse_binary(data)]


def test_full_log_keeps_enforcing_audits_and_shows_in_status(daemon_env: Daemon) -> None:
    d = daemon_env
    log_dir = d.state / "log"
    d.state.mkdir(mode=0o700)
    with small_fs(log_dir, size_kib=4096) as fs:
        # Made before the start: the daemon treats an ELF opened for reading (as signing
        # does) as a library load and appraises it.
        fillers = _copies(d, "evil-", 80, signed=False)
        (signed,) = _copies(d, "signed-", 1, signed=True)
        (unsigned,) = _copies(d, "unsigned-", 1, signed=False)
        try:
            d.start()
            doc = d.status()
            assert doc["log"] == {"ok": True, "error": None, "failed_appends": 0, "entries": 1}
            human = cli("status", "--socket", str(d.sock))
            assert "log:       ok (1 entries, 0 failed appends)" in human.stdout, human.stdout
            assert run(d.mnt / "good") == 0
            assert d.status()["log"]["entries"] == 2
            assert fs.fill() > 0
            # The last block of the log still has room for a few entries: exec new unsigned
            # programs (each denied, each measured) until an append fails.
            for p in fillers:
                assert run(p) == 126, f"{p.name}: an unsigned program ran"
                log = d.status()["log"]
                if not log["ok"]:
                    break
            else:
                pytest.fail(f"80 measured execs and the full log never failed: {log}")
            assert "ENOSPC" in log["error"]
            assert "binary_runtime_measurements" in log["error"]
            entries = log["entries"]
            # Still enforcing: signed runs, unsigned is refused; neither is measured.
            assert run(signed) == 0
            assert run(unsigned) == 126
            log = d.status()["log"]
            assert log["ok"] is False
            assert log["entries"] == entries
            assert log["failed_appends"] >= 3
            for path, result in ((signed, "allowed"), (unsigned, "denied")):
                records = _audit_of(d, path)
                assert records, f"{path.name}: the failed measurement was not audited"
                assert records[0]["outcome"] == "failed"
                assert records[0]["cause"] == "store_entry"
                assert records[0]["result"] == result
            human = cli("status", "--socket", str(d.sock))
            assert human.returncode == 0, human.stderr
            assert "log:       FAILING:" in human.stdout
            assert "ENOSPC" in d.log.read_text(), "the daemon did not log the failure"
            # Space is back: the next access measures again, and status is ok again.
            fs.free()
            assert run(signed) == 0
            log = d.status()["log"]
            assert log["ok"] is True
            assert log["error"] is None
            assert log["entries"] == entries + 1
            failed = log["failed_appends"]
            assert run(unsigned) == 126
            assert d.status()["log"] == {
                "ok": True,
                "error": None,
                "failed_appends": failed,
                "entries": entries + 2,
            }
        finally:
            d.stop()  # before the log's file system is unmounted
        names = _measured_names(log_dir)
        assert names.count(str(signed)) == 1
        assert names.count(str(unsigned)) == 1
        r = cli("log", "verify", "--state", str(log_dir))
        assert r.returncode == 0, r.stdout + r.stderr
