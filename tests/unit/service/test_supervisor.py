"""The supervisor with a fake worker: marks before go, restarts, the gate, READY/STOPPING."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imaguard.errors import BackendError
from imaguard.service import Supervisor, backoff_delay, load_config

from .conftest import MINIMAL
from .test_gate import record

FAKE_WORKER = r"""
import os, signal, socket, sys, time
channel = socket.socket(fileno=int(sys.argv[1]))
mode, marker = sys.argv[2], sys.argv[3]
n = len(os.listdir(marker))
open(os.path.join(marker, f"{n}-{os.getpid()}"), "w").close()
if mode == "fatal":
    channel.send(b"fatal policy[0].file: cannot read")
    sys.exit(78)
if n == 1:
    # the restarted worker waits for the test's go-ahead before it has "loaded"
    while not os.path.exists(os.path.join(marker, "..", "release")):
        time.sleep(0.01)
channel.send(b"loaded")
assert channel.recv(16) == b"go"
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
channel.send(b"running")
if n == 0:
    time.sleep(0.2)
    os._exit(3)          # the first worker crashes
while True:
    time.sleep(0.05)
"""


class FakeGroup:
    def __init__(self) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.marks: list[str] = []
        self.closed = False

    def mark_filesystem(self, path: str, *, open_events: bool = True) -> None:
        self.marks.append(path)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.peer.close()


def fake_argv(script: Path, mode: str, marker: Path) -> Any:
    def argv(_config: Any, _perm: Any, _group_fd: int, channel_fd: int, *_: Any) -> list[str]:
        return [sys.executable, str(script), str(channel_fd), mode, str(marker)]

    return argv


def make(tmp_path: Path, mode: str) -> tuple[Supervisor, FakeGroup, list[tuple[str, ...]], Path]:
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    marker = tmp_path / "workers"
    marker.mkdir()
    (tmp_path / "imaguard.toml").write_text(MINIMAL.replace("{tmp}", str(tmp_path)))
    cfg = load_config(tmp_path / "imaguard.toml")
    group = FakeGroup()
    sent: list[tuple[str, ...]] = []

    def notify(*lines: str, fds: Any = ()) -> bool:
        sent.append(lines)
        return True

    sup = Supervisor(
        cfg,
        None,
        group_factory=lambda: (group, False),
        argv=fake_argv(script, mode, marker),
        notify=notify,
    )
    return sup, group, sent, marker


def wait_for(cond: Any, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_restart_holds_foreign_events_and_denies_them(tmp_path: Path) -> None:
    sup, group, sent, marker = make(tmp_path, "crash")
    foreign = os.open(os.devnull, os.O_RDONLY)
    answers: list[bytes] = []

    def drive() -> None:
        try:
            # the second worker started: the first one crashed and the gate is on
            wait_for(lambda: len(os.listdir(marker)) == 2)
            second_pid = int(sorted(os.listdir(marker))[1].split("-")[1])
            own = os.open(os.devnull, os.O_RDONLY)
            group.peer.send(record(own, second_pid) + record(foreign, 999999))
            group.peer.settimeout(10)
            answers.append(group.peer.recv(8))  # the starting worker's own event: allowed
            (tmp_path / "release").touch()
            answers.append(group.peer.recv(8))  # the foreign one: held, then denied
            wait_for(lambda: sup.worker is not None and sup.worker.running)
        finally:
            (tmp_path / "release").touch()
            sup.stop()

    t = threading.Thread(target=drive)
    t.start()
    assert sup.run() == 0
    t.join()
    assert group.marks == [str(tmp_path)]
    assert answers[0][4:] == b"\x01\x00\x00\x00"
    assert answers[1] == foreign.to_bytes(4, sys.byteorder, signed=True) + b"\x02\x00\x00\x00"
    assert sup.restarts == 1
    assert len(sup.gaps_ms) == 1
    assert sup.gaps_ms[0] > 0
    assert group.closed
    words = [line for lines in sent for line in lines]
    assert words[0] == "FDSTORE=1"
    assert words.count("READY=1") == 1
    assert any(w.startswith("STATUS=enforcing (worker restarted") for w in words)
    assert words[-1] == "STOPPING=1"
    assert words.index("READY=1") < words.index("STOPPING=1")


def test_worker_that_cannot_start_is_an_error(tmp_path: Path) -> None:
    sup, group, sent, _ = make(tmp_path, "fatal")
    with pytest.raises(BackendError, match=r"policy\[0\]\.file: cannot read"):
        sup.run()
    assert group.marks == []  # nothing was marked: nothing waited for a worker that never ran
    assert not any("READY=1" in lines for lines in sent)


def test_backoff() -> None:
    assert [backoff_delay(n, 5.0) for n in (1, 2, 3, 4)] == [0.0, 0.1, 0.2, 0.4]
    assert backoff_delay(20, 5.0) == 5.0


def test_reload_messages_become_sd_notify(tmp_path: Path) -> None:
    sup, group, sent, _ = make(tmp_path, "crash")
    sup._on_message("reloading")
    sup._on_message("reload-failed policy[0].lock: must be one of ...")
    sup._on_message("reloaded")
    assert sent[0][0] == "RELOADING=1"
    assert sent[0][1].startswith("MONOTONIC_USEC=")
    assert sent[1][0] == "READY=1"
    assert "policy[0].lock" in sent[1][1]
    assert sent[2] == ("READY=1", "STATUS=enforcing (configuration reloaded)")
    sup._sel.close()
    sup._wake_r.close()
    sup._wake_w.close()
    group.close()
