"""The control socket under attack: descriptors thrown at it, many slow clients, a flood of
connections — the daemon keeps no descriptor it did not ask for and serves the others."""

from __future__ import annotations

import array
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imaguard.service import ControlServer, Peer, Reply
from imaguard.service._protocol import serialize

from .conftest import connect, public_server, read_frame

SEEN_FDS: list[int] = []


def handler(request: dict[str, object], peer: Peer, fds: list[int]) -> Reply:
    SEEN_FDS.append(len(fds))
    return Reply({"uid": peer.uid, "fds": len(fds)})


@pytest.fixture
def server() -> Iterator[ControlServer]:
    with public_server(handler, max_clients=32, max_per_uid=8, frame_timeout=2) as srv:
        SEEN_FDS.clear()
        yield srv


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_descriptors_are_not_kept(server: ControlServer, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"x")
    fds = [os.open(target, os.O_RDONLY) for _ in range(250)]  # SCM_MAX_FD is 253 a message
    try:
        settle = time.monotonic() + 0.5
        while time.monotonic() < settle:
            time.sleep(0.05)
        before = open_fds()
        with connect(server.path) as s:
            frame = serialize({"v": 1, "op": "status"})
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            # 1,000 descriptors: the first byte of the frame carries 250, three more
            # messages before it carry 250 each (all on one stream)
            for _ in range(3):
                s.sendmsg([frame[:1]], anc)
                s.sendmsg([frame[1:]])
                assert read_frame(s)["ok"] is True
            s.sendmsg([frame[:1]], anc)
            s.sendmsg([frame[1:]])
            answer = read_frame(s)
        assert answer["ok"] is True
        assert SEEN_FDS == [4, 4, 4, 4]  # room for four: the kernel closed the rest
        deadline = time.monotonic() + 3
        while open_fds() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        # this process is both sides here: after the answers every received descriptor
        # is closed again (the 250 of the test are in `before`)
        assert open_fds() == before
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.root
def test_a_hundred_slow_clients_do_not_block_another_user(server: ControlServer) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the attacker: 100 connections that never finish a frame
        code = 1
        try:
            os.close(r)
            os.setgid(1004)
            os.setuid(1004)
            slow = []
            for _ in range(100):
                try:
                    s = connect(server.path)
                except OSError:  # the listen backlog is full for a moment: go on
                    continue
                slow.append(s)
                # half a header, then nothing (past its share the daemon has already
                # answered busy and closed: the send may fail, which is the point)
                with contextlib.suppress(OSError):
                    s.sendall(b"\x00\x00")
            code = 0 if len(slow) >= 50 else 1  # the attack really happened
            os.write(w, b"ready")
            time.sleep(1.5)
            for s in slow:
                s.close()
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            assert f.read(5) == b"ready"
        t = time.monotonic()
        with connect(server.path) as s:  # root, another uid: served at once
            s.sendall(serialize({"v": 1, "op": "status"}))
            answer = read_frame(s)
        assert answer["ok"] is True
        assert time.monotonic() - t < 1.0
    finally:
        _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 0
