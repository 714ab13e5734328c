"""Connection limits of the control socket: a user cannot take every slot, and a connection
that never asks anything is closed soon (docs/protocol.md, "The socket")."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from imaguard.service import ControlServer, Peer, Reply
from imaguard.service._protocol import serialize

from .conftest import connect, public_server, read_frame


def status(request: dict[str, object], peer: Peer, fds: list[int]) -> Reply:
    return Reply({"uid": peer.uid})


@pytest.fixture
def server() -> Iterator[ControlServer]:
    with public_server(status, max_clients=8, max_per_uid=2, first_frame_timeout=0.4) as srv:
        yield srv


def ask(s: socket.socket) -> dict[str, object]:
    s.sendall(serialize({"v": 1, "op": "status"}))
    return read_frame(s)


def test_one_uid_gets_at_most_its_share(server: ControlServer) -> None:
    first, second = connect(server.path), connect(server.path)
    try:
        assert ask(first)["ok"] is True
        assert ask(second)["ok"] is True
        third = connect(server.path)
        with third:
            answer = read_frame(third)  # answered at once, without a request
            assert answer["ok"] is False
            error = answer["error"]
            assert isinstance(error, dict)
            assert error["code"] == "busy"
            assert f"uid {os.geteuid()} has 2 connections open" in str(error["message"])
            assert third.recv(1) == b""  # and closed
    finally:
        first.close()
        second.close()
    deadline = time.monotonic() + 3
    while True:  # the slots come back once those two are gone
        with connect(server.path) as again:
            answer = ask(again)
        if answer["ok"] is True or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer["ok"] is True


@pytest.mark.root
def test_another_uid_is_served_while_one_uid_is_at_its_limit(server: ControlServer) -> None:
    hogs = [connect(server.path), connect(server.path)]
    try:
        for h in hogs:
            assert ask(h)["ok"] is True
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                os.close(r)
                os.setgid(1003)
                os.setuid(1003)
                with connect(server.path) as s:
                    answer = ask(s)
                result = answer.get("result")
                if answer["ok"] is True and isinstance(result, dict):
                    os.write(w, str(result["uid"]).encode())
                    code = 0
            finally:
                os._exit(code)
        os.close(w)
        _, st = os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as f:
            got = f.read()
        assert os.waitstatus_to_exitcode(st) == 0
        assert got == b"1003"
    finally:
        for h in hogs:
            h.close()


def test_a_silent_connection_is_closed_soon(server: ControlServer) -> None:
    with connect(server.path) as silent:
        t = time.monotonic()
        assert silent.recv(1) == b""  # closed, no answer: it never asked anything
        waited = time.monotonic() - t
    assert 0.3 <= waited < 3
    with connect(server.path) as s:  # its slot is free again
        assert ask(s)["ok"] is True
