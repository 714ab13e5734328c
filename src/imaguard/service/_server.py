"""The control socket's server (docs/protocol.md): one thread a connection, at most
``max_clients`` at once, each frame whole within 5 s, idle connections closed after 60 s.

The handler gets ``(request, peer, fds)`` and returns a :class:`Reply`, or raises
:class:`~imaguard.service._protocol.ProtocolError` for an error answer. A reply may carry
a ``stream``: frames sent after the answer until the stream ends or the client hangs up
(``decisions --follow``); the stream yields ``None`` now and then so a client that left is
noticed. Received descriptors are closed once the request is answered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from imaguard.service._owners import Peer, identify, peer_credentials
from imaguard.service._protocol import (
    FATAL,
    FIRST_FRAME_TIMEOUT,
    FRAME_TIMEOUT,
    IDLE_TIMEOUT,
    VERSION,
    Closed,
    ProtocolError,
    close_fds,
    recv_frame,
    send_frame,
)

__all__ = ["ControlServer", "Reply"]

LISTEN_BACKLOG = 512

_log = logging.getLogger(__name__)


@dataclass
class Reply:
    """An answer's ``result``, and optionally frames that follow it."""

    result: dict[str, Any]
    stream: Iterator[dict[str, Any] | None] | None = None


Handler = Callable[[dict[str, Any], Peer, list[int]], Reply]


class ControlServer:
    """Serves ``handler`` on a Unix stream socket at ``path`` (created with ``mode``)."""

    def __init__(
        self,
        path: str,
        handler: Handler,
        *,
        mode: int = 0o600,
        max_clients: int = 64,
        max_per_uid: int | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        frame_timeout: float = FRAME_TIMEOUT,
        first_frame_timeout: float = FIRST_FRAME_TIMEOUT,
    ) -> None:
        self.path = path
        self._handler = handler
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        parent = os.path.dirname(path) or "."
        os.makedirs(parent, mode=0o755, exist_ok=True)
        st = os.stat(parent)
        if st.st_mode & 0o002 and not st.st_mode & 0o1000:
            _log.warning("%s: the socket's directory is writable by everyone", parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self._sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        self._sock.listen(LISTEN_BACKLOG)  # bursts wait to be accepted (and told busy)
        self._sock.settimeout(0.5)
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(max_clients)
        self.max_clients = max_clients
        # one user cannot take every slot: the others keep theirs
        self.max_per_uid = max_per_uid if max_per_uid is not None else max(4, max_clients // 4)
        self.first_frame_timeout = min(first_frame_timeout, idle_timeout)
        self._per_uid: dict[int, int] = {}
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="imaguard-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            uid = _peer_uid(conn)
            with self._count_lock:
                mine = self._per_uid.get(uid, 0)
                if mine >= self.max_per_uid:
                    self._busy(
                        conn,
                        f"uid {uid} has {mine} connections open "
                        f"(at most {self.max_per_uid} a user)",
                    )
                    continue
                if not self._slots.acquire(blocking=False):
                    self._busy(conn, f"{self.max_clients} clients are being served; try again")
                    continue
                self._per_uid[uid] = mine + 1
            threading.Thread(target=self._client, args=(conn, uid), daemon=True).start()

    @staticmethod
    def _busy(conn: socket.socket, message: str) -> None:
        """Answer ``busy`` without waiting for the client (its buffer is empty) and close."""
        with conn:
            conn.setblocking(False)
            with contextlib.suppress(OSError, ProtocolError):
                send_frame(conn, _error(None, ProtocolError("busy", message)))

    def _client(self, conn: socket.socket, uid: int) -> None:
        peer: Peer | None = None
        try:
            with conn:
                peer = identify(conn)
                self._serve_peer(conn, peer)
        except OSError as e:
            _log.debug("control client: %s", e)
        except Exception:
            _log.exception("control client")
        finally:
            if peer is not None:
                peer.close()
            with self._count_lock:
                left = self._per_uid.get(uid, 1) - 1
                if left > 0:
                    self._per_uid[uid] = left
                else:
                    self._per_uid.pop(uid, None)
            self._slots.release()

    def _serve_peer(self, conn: socket.socket, peer: Peer) -> None:
        idle = self.first_frame_timeout  # a connection that never asks anything goes soon
        while not self._stop.is_set():
            try:
                request, fds = recv_frame(conn, idle=idle, frame_timeout=self.frame_timeout)
                idle = self.idle_timeout
            except (Closed, TimeoutError):
                return
            except ProtocolError as e:
                self._send(conn, _error(None, e))
                return
            rid = request.get("id")
            try:
                if request.get("v") != VERSION:
                    raise ProtocolError(
                        "bad-version",
                        f"protocol version {request.get('v')!r} is not spoken here (v: 1)",
                    )
                reply = self._handler(request, peer, fds)
            except ProtocolError as e:
                answer = _error(rid, e)
                if e.code == "bad-version":
                    answer["versions"] = [VERSION]
                self._send(conn, answer)
                if e.code in FATAL:
                    return
                continue
            except Exception as e:
                _log.exception("control request %r", request.get("op"))
                self._send(conn, _error(rid, ProtocolError("internal", f"internal error: {e}")))
                continue
            finally:
                close_fds(fds)
            answer = {"v": VERSION, "ok": True, "result": reply.result}
            if rid is not None:
                answer["id"] = rid
            if not self._send(conn, answer):
                return
            if reply.stream is not None:
                self._stream(conn, reply.stream)
                return

    def _stream(self, conn: socket.socket, stream: Iterator[dict[str, Any] | None]) -> None:
        try:
            for item in stream:
                if self._stop.is_set() or _hung_up(conn):
                    return
                if item is not None and not self._send(conn, {"v": VERSION, "ok": True, **item}):
                    return
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _send(self, conn: socket.socket, answer: dict[str, Any]) -> bool:
        try:
            conn.settimeout(self.frame_timeout)  # a client that does not read is cut off
            send_frame(conn, answer)
            return True
        except ProtocolError as e:  # the answer is too large for one frame
            with contextlib.suppress(OSError, ProtocolError):
                send_frame(conn, _error(answer.get("id"), ProtocolError("internal", str(e))))
            return True
        except OSError as e:
            _log.debug("control client gone: %s", e)
            return False

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _error(rid: Any, e: ProtocolError) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "v": VERSION,
        "ok": False,
        "error": {"code": e.code, "message": e.message},
    }
    if rid is not None:
        answer["id"] = rid
    return answer


def _peer_uid(conn: socket.socket) -> int:
    try:
        return peer_credentials(conn)[1]
    except OSError:
        return -1


def _hung_up(conn: socket.socket) -> bool:
    """True when the client closed its end (or sent something a stream does not expect)."""
    p = select.poll()
    p.register(conn, select.POLLIN | select.POLLHUP | select.POLLERR)
    if not p.poll(0):
        return False
    try:
        conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True
