"""The supervisor's gate: own events allowed, every other event held and then denied."""

from __future__ import annotations

import os
import socket
import struct

from imaguard.service import Gate, parse_events

META = struct.Struct("=IBBHQii")
FAN_OPEN_EXEC_PERM = 0x40000


def record(fd: int, pid: int, pidfd: int | None = None) -> bytes:
    info = b""
    if pidfd is not None:
        info = struct.pack("=BBHi", 4, 0, 8, pidfd)
    return META.pack(META.size + len(info), 3, 0, META.size, FAN_OPEN_EXEC_PERM, fd, pid) + info


def responses(peer: socket.socket) -> list[tuple[int, int]]:
    peer.setblocking(False)
    out = []
    try:
        while data := peer.recv(8):
            out.append(struct.unpack("=iI", data))
    except BlockingIOError:
        pass
    return out


def test_parse_closes_pidfds() -> None:
    pidfd = os.open(os.devnull, os.O_RDONLY)
    assert parse_events(record(9, 100, pidfd) + record(-1, 0)) == [
        (9, 100, FAN_OPEN_EXEC_PERM),
        (-1, 0, FAN_OPEN_EXEC_PERM),
    ]
    try:
        os.fstat(pidfd)
        closed = False
    except OSError:
        closed = True
    assert closed


def test_gate_allows_own_holds_others_then_denies() -> None:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    own = os.open(os.devnull, os.O_RDONLY)
    other = os.open(os.devnull, os.O_RDONLY)
    try:
        gate = Gate(ours.fileno())
        peer.send(record(own, 10) + record(other, 99) + record(-1, 0))
        assert gate.read({10}) == 3
        assert responses(peer) == [(own, 0x01)]
        assert gate.held == [other]
        assert gate.release() == 1
        assert responses(peer) == [(other, 0x02)]
        assert gate.held == []
        assert (gate.allowed, gate.denied) == (1, 1)
        assert gate.read({10}) == 0  # nothing queued: no block, no answer
    finally:
        ours.close()
        peer.close()
