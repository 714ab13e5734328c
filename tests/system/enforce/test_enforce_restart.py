"""A worker killed mid-decision while its parent holds the group fd: the event waits, and a
new worker adopting the fd denies it (inflight registry) and decides new events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import imaguard
from imaguard.enforce import FanotifyGroup

from .conftest import (
    EXEC_SNIPPET,
    copy_true,
    enforcer,
    exec_result,
    refused_eperm,
    sign,
)

pytestmark = pytest.mark.root


def test_killed_worker_leaves_event_waiting_and_successor_denies_it(
    tmpfs: Path,
    signer: tuple[imaguard.PrivateKey, Path],
    tmp_path: Path,
) -> None:
    key, cert = signer
    good = copy_true(tmpfs / "good")
    sign(good, key)
    bad = copy_true(tmpfs / "bad")
    inflight = str(tmp_path / "inflight")
    group = FanotifyGroup.create()  # this test plays the supervisor: it keeps the fd
    blocked: subprocess.Popen[str] | None = None
    try:
        group.mark_filesystem(str(tmpfs))
        common = [
            "--adopt-fd",
            str(group.fd),
            "--inflight",
            inflight,
            "--own-pid",
            str(os.getpid()),
        ]
        with enforcer(tmpfs, cert, tmp_path, *common, "--slow", "5", pass_fds=(group.fd,)) as w1:
            blocked = subprocess.Popen(
                [sys.executable, "-c", EXEC_SNIPPET, str(good)],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)  # w1 has read the event and is deciding it (slowly)
            os.kill(w1.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            time.sleep(1.0)
            assert blocked.poll() is None, "the exec was released when the worker died"
        with enforcer(tmpfs, cert, tmp_path, *common, pass_fds=(group.fd,)) as w2:
            out = blocked.communicate(timeout=30)[0]
            gap = time.monotonic() - killed_at
            assert w2.recovered == 1
            assert out.strip() == "ERRNO 1"  # the crashed worker's event: denied, not allowed
            assert exec_result([str(good)]).returncode == 0  # new events are decided
            assert refused_eperm(exec_result([str(bad)]))
            print(f"blocked for {gap:.2f} s across the restart")
    finally:
        if blocked is not None and blocked.poll() is None:
            blocked.kill()
            blocked.wait(5)
        if blocked is not None and blocked.stdout is not None:
            blocked.stdout.close()
        group.close()
