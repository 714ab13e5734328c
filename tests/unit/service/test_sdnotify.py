"""sd_notify messages captured on a datagram socket; $LISTEN_FDS parsing."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from imaguard.service import listen_fds, monotonic_usec, notify


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(5)
    yield s, path
    s.close()


def test_ready_and_status(manager: tuple[socket.socket, str]) -> None:
    s, path = manager
    assert notify("READY=1", "STATUS=enforcing", env={"NOTIFY_SOCKET": path})
    assert s.recv(4096) == b"READY=1\nSTATUS=enforcing"


def test_abstract_socket() -> None:
    name = f"imaguard-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096) == b"STOPPING=1"


def test_fd_store_passes_the_fd(manager: tuple[socket.socket, str], tmp_path: Path) -> None:
    s, path = manager
    f = tmp_path / "f"
    f.write_text("x")
    fd = os.open(f, os.O_RDONLY)
    try:
        assert notify("FDSTORE=1", "FDNAME=fanotify", fds=[fd], env={"NOTIFY_SOCKET": path})
    finally:
        os.close(fd)
    fds = array.array("i")
    msg, anc, _flags, _addr = s.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    assert msg == b"FDSTORE=1\nFDNAME=fanotify"
    [(level, kind, data)] = anc
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fds.frombytes(data[: fds.itemsize])
    try:
        assert os.fstat(fds[0]).st_ino == f.stat().st_ino
    finally:
        os.close(fds[0])


def test_reloading_carries_monotonic_usec(manager: tuple[socket.socket, str]) -> None:
    s, path = manager
    before = monotonic_usec()
    notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", env={"NOTIFY_SOCKET": path})
    lines = s.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert int(lines[1].split("=")[1]) >= before


def test_without_a_manager_nothing_is_sent() -> None:
    assert notify("READY=1", env={}) is False


def test_listen_fds() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "fanotify:other"}
    assert listen_fds(env) == {"fanotify": [3], "other": [4]}
    assert listen_fds({**env, "LISTEN_PID": "1"}) == {}
    assert listen_fds({}) == {}
