"""Fixtures for the fanotify system tests: a private tmpfs, keys, an Enforcer in a child.

Safety: each test mounts its own tmpfs and the Enforcer marks only that filesystem; the
Enforcer runs in a child process under ``timeout`` and is killed by its PID afterwards.
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
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import imaguard

RUNNER = Path(__file__).with_name("runner.py")
SRC = Path(__file__).resolve().parents[3] / "src"
TIMEOUT = 60
TMPFS_MAGIC = "0x01021994"
POLICY = f"""\
appraise func=BPRM_CHECK fsmagic={TMPFS_MAGIC} appraise_type=imasig
appraise func=MMAP_CHECK mask=MAY_EXEC fsmagic={TMPFS_MAGIC} appraise_type=imasig
measure func=BPRM_CHECK fsmagic={TMPFS_MAGIC}
"""


def _fanotify_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "fanotify permission events need root"
    try:
        from imaguard.enforce import FanotifyGroup

        FanotifyGroup.create().close()
    except imaguard.Error as e:
        return f"fanotify is unavailable here: {e}"
    return None


@pytest.fixture(scope="session")
def fanotify_ok() -> None:
    why = _fanotify_unavailable()
    if why:
        pytest.skip(why)


@pytest.fixture
def tmpfs(tmp_path: Path, fanotify_ok: None) -> Iterator[Path]:
    where = tmp_path / "mnt"
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(where)],
        capture_output=True,
        timeout=TIMEOUT,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr!r}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=TIMEOUT)


@pytest.fixture(scope="session")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[imaguard.PrivateKey, Path]:
    d = tmp_path_factory.mktemp("enforce-key")
    imaguard.generate_key("ecdsa-p256").write(d)
    return imaguard.load_private_key(d / "private.pem"), d / "cert.der"


def sign(path: Path, key: imaguard.PrivateKey) -> None:
    imaguard.sign_file(path, key, store="xattr")


class Daemon:
    def __init__(self, proc: subprocess.Popen[str], log: Path, ready: str) -> None:
        self.proc = proc
        self.log = log
        _, recovered, pid = ready.split()
        self.recovered = int(recovered)
        self.pid = int(pid)  # the runner itself (proc is the timeout(1) wrapper)

    def _cmd(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stats(self) -> dict[str, Any]:
        """The counters once they settle: a worker counts an event just after answering it,
        so the caller may already be running when the count moves."""
        last: dict[str, Any] = json.loads(self._cmd("stats"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now: dict[str, Any] = json.loads(self._cmd("stats"))
            if now == last:
                break
            last = now
        return last

    def flush(self) -> None:
        assert self._cmd("flush") == "OK"

    def decisions(self) -> list[dict[str, Any]]:
        """The decisions recorded so far, once the record has settled.

        The enforcer replies before it records, so a caller that just saw an exec fail may
        look before the record is written: wait until no new line came for 0.2 s (5 s at most).
        """
        last, stable_since, end = -1, time.monotonic(), time.monotonic() + 5
        while time.monotonic() < end:
            n = len(self.log.read_bytes()) if self.log.exists() else 0
            if n != last:
                last, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since >= 0.2:
                break
            time.sleep(0.02)
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text().splitlines() if x]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


@contextlib.contextmanager
def enforcer(
    mount: Path,
    cert: Path,
    tmp: Path,
    *args: str,
    policy: str = POLICY,
    pass_fds: tuple[int, ...] = (),
    stderr: IO[str] | None = None,
) -> Iterator[Daemon]:
    pol = tmp / "policy.txt"
    pol.write_text(policy)
    log = tmp / f"decisions-{os.urandom(4).hex()}.jsonl"
    cmd = ["timeout", "-s", "KILL", str(TIMEOUT), sys.executable, str(RUNNER)]
    cmd += [str(mount), str(pol), str(cert), str(log), *args]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=child_env(),
        pass_fds=pass_fds,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), f"the enforcer did not start: {line!r}"
        yield Daemon(proc, log, line)
    finally:
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kw)


def copy_true(dst: Path) -> Path:
    shutil.copy2("/bin/true", dst)
    os.chmod(dst, 0o755)  # noqa: S103 - a program must be executable
    return dst


EXEC_SNIPPET = (
    "import os, sys\n"
    "try:\n"
    "    os.execv(sys.argv[1], sys.argv[1:])\n"
    "except OSError as e:\n"
    "    print('ERRNO', e.errno, flush=True)\n"
    "    sys.exit(99)\n"
)


def exec_result(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """execv ``argv`` in a child; a refused exec prints ``ERRNO n`` and exits 99."""
    return run([sys.executable, "-c", EXEC_SNIPPET, *argv], **kw)


def refused_eperm(r: subprocess.CompletedProcess[str]) -> bool:
    return r.returncode == 99 and r.stdout.strip() == "ERRNO 1"
