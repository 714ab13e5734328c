"""The real daemon (``imaguard daemon --foreground``) on a tmpfs each test mounts.

Safety: the config watches ONLY that fresh tmpfs; the daemon runs under ``timeout 90`` and
is stopped by its PID (supervisor, then worker) in a ``finally``; the tmpfs is unmounted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import imaguard

SRC = Path(__file__).resolve().parents[3] / "src"
TMPFS_MAGIC = "0x01021994"
POLICY = f"""\
appraise func=BPRM_CHECK fsmagic={TMPFS_MAGIC} appraise_type=imasig
appraise func=MMAP_CHECK mask=MAY_EXEC fsmagic={TMPFS_MAGIC} appraise_type=imasig
measure func=BPRM_CHECK fsmagic={TMPFS_MAGIC}
"""
CONFIG = """\
mode = "{mode}"
watch = ["{mnt}"]
state = "{state}"
socket = "{sock}"
keyrings = ["{ring}"]

[[policy]]
name = "exec-guard"
owner = "admin"
file = "exec-guard.policy"
lock = "open"
"""


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the daemon's fanotify permission events need root"
    try:
        from imaguard.enforce import FanotifyGroup
    except ImportError:
        return "needs imaguard.enforce"
    try:
        FanotifyGroup.create().close()
    except imaguard.Error as e:
        return f"fanotify is unavailable here: {e}"
    return None


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(SRC), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return e


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imaguard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        check=check,
    )


@dataclass
class Daemon:
    base: Path
    mnt: Path
    config: Path
    sock: Path
    state: Path
    mode: str = "enforce"
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    pids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.log = self.base / "daemon.log"

    def write_config(self, extra: str = "", mode: str | None = None) -> None:
        self.config.write_text(
            CONFIG.format(
                mode=mode or self.mode,
                mnt=self.mnt,
                state=self.state,
                sock=self.sock,
                ring=self.base / "ring",
            )
            + extra
        )

    def start(self, *args: str) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "timeout",
                    "90",
                    sys.executable,
                    "-m",
                    "imaguard",
                    "daemon",
                    "--foreground",
                    "--config",
                    str(self.config),
                    *args,
                ],
                stdout=log,
                stderr=log,
                env=env(),
            )
        self.wait_ready()

    def status(self) -> dict[str, Any]:
        r = cli("status", "--socket", str(self.sock), "--json")
        if r.returncode != 0:
            raise AssertionError(r.stderr)
        doc: dict[str, Any] = json.loads(r.stdout)
        self.pids.update({doc["pid"], doc["worker_pid"]})
        return doc

    def wait_ready(self, timeout: float = 30, restarts: int | None = None) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()}")
            with contextlib.suppress(AssertionError):
                doc = self.status()
                if doc["ready"] and (restarts is None or doc["restarts"] >= restarts):
                    return doc
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready: {self.log.read_text()}")

    def stop(self) -> None:
        for pid in sorted(self.pids):  # supervisor first (lower pid), then the worker
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]


@contextlib.contextmanager
def daemon_on_tmpfs(tmp_path: Path, size: str = "64m") -> Iterator[Daemon]:
    """A Daemon (not started) for a tmpfs mounted at tmp_path/mnt: skipped without root,
    fanotify or tmpfs; afterwards it is stopped by its PIDs and the tmpfs unmounted."""
    why = _unavailable()
    if why:
        pytest.skip(why)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr!r}")
    d = Daemon(tmp_path, mnt, tmp_path / "imaguard.toml", tmp_path / "c.sock", tmp_path / "state")
    try:
        yield d
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def prepare(d: Daemon) -> imaguard.PrivateKey:
    """Keys, a signed ``good`` and an unsigned ``evil`` copy of /bin/true, the policy and
    the config; the signing key."""
    keys = d.base / "keys"
    imaguard.generate_key("ecdsa-p256").write(keys)
    (d.base / "ring").mkdir()
    shutil.copy(keys / "cert.der", d.base / "ring" / "cert.der")
    key = imaguard.load_private_key(keys / "private.pem")
    for name in ("good", "evil"):
        shutil.copy("/bin/true", d.mnt / name)
    imaguard.sign_file(d.mnt / "good", key, "sha256")
    (d.base / "exec-guard.policy").write_text(POLICY)
    d.write_config()
    return key


@pytest.fixture
def daemon_env(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_on_tmpfs(tmp_path) as d:
        prepare(d)
        yield d


def run(path: Path | str, *args: str) -> int:
    """Exec ``path``; 126 when the exec is refused (EPERM)."""
    try:
        return subprocess.run([str(path), *args], capture_output=True, timeout=30).returncode
    except PermissionError:
        return 126


Runner = Callable[..., int]
