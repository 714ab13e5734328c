"""The control protocol's framing (docs/protocol.md): a 4-byte big-endian length, then one
JSON object; one file descriptor may ride along as ``SCM_RIGHTS`` with the first byte.

``parse`` / ``serialize`` turn a frame's bytes into an object and back; ``send_frame`` and
``recv_frame`` move whole frames over a socket with the protocol's limits (1 MiB a frame,
5 s from a frame's first byte to its last).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
import time
from typing import Any

from imaguard.errors import BackendError, FormatError

__all__ = [
    "ERROR_CODES",
    "FIRST_FRAME_TIMEOUT",
    "FRAME_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_FRAME",
    "VERSION",
    "Closed",
    "ProtocolError",
    "parse",
    "recv_frame",
    "send_frame",
    "serialize",
]

VERSION = 1
MAX_FRAME = 1 << 20
FRAME_TIMEOUT = 5.0
IDLE_TIMEOUT = 60.0
FIRST_FRAME_TIMEOUT = 10.0  # a connection must ask something within 10 s of connecting
_HEADER = struct.Struct(">I")
MAX_FDS = 4  # more than one is closed unread; room for a few so none leaks in the kernel

ERROR_CODES = (
    "bad-frame",
    "timeout",
    "busy",
    "bad-version",
    "unknown-op",
    "bad-request",
    "permission-denied",
    "peer-gone",
    "ambiguous-owner",
    "no-such-policy",
    "exists",
    "config-policy",
    "locked",
    "rollback",
    "bad-signature",
    "bad-policy",
    "no-fd",
    "not-ready",
    "internal",
)
FATAL = frozenset({"bad-frame", "timeout", "busy"})
"""Codes after which the daemon closes the connection."""


class ProtocolError(FormatError):
    """A request the daemon answers with an error frame: ``code`` from :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message


class Closed(BackendError):  # noqa: N818 - reads as what happened
    """The peer closed the connection between frames."""


def serialize(obj: dict[str, Any]) -> bytes:
    """One frame: header and body."""
    body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    if not body or len(body) > MAX_FRAME:
        raise ProtocolError("bad-frame", f"a frame body is 1..{MAX_FRAME} bytes, not {len(body)}")
    return _HEADER.pack(len(body)) + body


def parse(frame: bytes) -> dict[str, Any]:
    """The object of one whole frame (header and body)."""
    if len(frame) < _HEADER.size:
        raise ProtocolError("bad-frame", "a frame starts with a 4-byte length")
    (n,) = _HEADER.unpack_from(frame)
    check_length(n)
    body = frame[_HEADER.size :]
    if len(body) != n:
        raise ProtocolError("bad-frame", f"the length says {n} bytes, the body has {len(body)}")
    return parse_body(body)


def check_length(n: int) -> None:
    if not 1 <= n <= MAX_FRAME:
        raise ProtocolError("bad-frame", f"frame length {n} is out of range (1..{MAX_FRAME} bytes)")


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("bad-frame", f"the frame body is not UTF-8 JSON: {e}") from e
    except RecursionError:
        raise ProtocolError("bad-frame", "the frame body's JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad-frame", "the frame body must be a JSON object")
    return obj


def send_frame(sock: socket.socket, obj: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    """Send one frame; ``fds`` go as SCM_RIGHTS with its first bytes (one sendmsg)."""
    data = serialize(obj)
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([data], anc)
        if sent < len(data):
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def _recv_some(sock: socket.socket, n: int, deadline: float | None, fds: list[int]) -> bytes:
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProtocolError("timeout", f"a frame must arrive whole within {FRAME_TIMEOUT:g} s")
        sock.settimeout(left)
    try:
        data, anc, _flags, _addr = sock.recvmsg(n, socket.CMSG_SPACE(MAX_FDS * 4))
    except TimeoutError as e:
        if deadline is None:
            raise  # idle between frames: the caller closes without an answer
        raise ProtocolError(
            "timeout", f"a frame must arrive whole within {FRAME_TIMEOUT:g} s"
        ) from e
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % 4])
            fds.extend(got)
    return data


def recv_frame(
    sock: socket.socket,
    *,
    idle: float | None = IDLE_TIMEOUT,
    frame_timeout: float = FRAME_TIMEOUT,
) -> tuple[dict[str, Any], list[int]]:
    """Read one frame and the descriptors sent with it.

    Waits up to ``idle`` seconds for its first byte (``TimeoutError``; ``None`` waits
    forever), then ``frame_timeout`` for the rest (ProtocolError ``timeout``). A length out
    of range is refused before any of the body is read. Raises :class:`Closed` when the
    peer hangs up before a frame starts. The caller owns (and closes) the descriptors,
    also those received with a frame that then fails: on error they are closed here.
    """
    fds: list[int] = []
    try:
        sock.settimeout(idle)
        first = _recv_some(sock, _HEADER.size, None, fds)
        if not first:
            raise Closed()
        deadline = time.monotonic() + frame_timeout
        header = first
        while len(header) < _HEADER.size:
            more = _recv_some(sock, _HEADER.size - len(header), deadline, fds)
            if not more:
                raise ProtocolError("bad-frame", "the connection ended inside a frame header")
            header += more
        (n,) = _HEADER.unpack(header)
        check_length(n)
        chunks: list[bytes] = []
        got = 0
        while got < n:
            more = _recv_some(sock, min(n - got, 1 << 16), deadline, fds)
            if not more:
                raise ProtocolError("bad-frame", "the connection ended inside a frame")
            chunks.append(more)
            got += len(more)
        return parse_body(b"".join(chunks)), fds
    except BaseException:
        close_fds(fds)
        raise


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()
