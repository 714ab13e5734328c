"""The control socket: a Unix stream socket, mode 0600, one JSON request and answer a line.

Requests: ``{"request": "status"}``. The answer is one JSON object; an unknown request gets
``{"error": ...}``. Only root or the daemon's own uid may connect (``SO_PEERCRED``), on top
of the socket file's mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from imaguard.errors import BackendError

__all__ = ["STATUS_KEYS", "ControlServer", "query_status", "status_document"]

_log = logging.getLogger(__name__)

STATUS_KEYS = (
    "ready",
    "mode",
    "watched",
    "policies",
    "decisions",
    "cache",
    "queue",
    "pid",
)
MAX_REQUEST = 4096


def status_document(
    *,
    ready: bool,
    mode: str,
    watched: list[str] | tuple[str, ...],
    policies: list[dict[str, Any]],
    stats: Any,
    pid: int,
    **extra: Any,
) -> dict[str, Any]:
    """The ``imaguard status --json`` object (a contract: keep the keys)."""
    doc: dict[str, Any] = {
        "ready": bool(ready),
        "mode": mode,
        "watched": list(watched),
        "policies": policies,
        "decisions": {
            "allowed": int(getattr(stats, "allowed", 0)),
            "denied": int(getattr(stats, "denied", 0)),
        },
        "cache": {
            "hits": int(getattr(stats, "cache_hits", 0)),
            "misses": int(getattr(stats, "cache_misses", 0)),
        },
        "queue": int(getattr(stats, "queue", 0)),
        "pid": pid,
    }
    for name in ("events", "overflow_denied", "ignore_marks"):
        if hasattr(stats, name):
            doc[name] = int(getattr(stats, name))
    doc.update(extra)
    return doc


class ControlServer:
    """Serves ``answer(request) -> dict`` on a Unix socket, one short-lived thread per client."""

    def __init__(self, path: str, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = path
        self._answer = answer
        parent = os.path.dirname(path) or "."
        os.makedirs(parent, mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self._sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._sock.listen(16)
        self._sock.settimeout(0.5)
        self._stop = threading.Event()
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
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                _pid, uid, _gid = struct.unpack("3i", creds)
                if uid not in (0, os.geteuid()):
                    conn.sendall(b'{"error": "permission denied"}\n')
                    return
                data = b""
                while b"\n" not in data and len(data) < MAX_REQUEST:
                    chunk = conn.recv(MAX_REQUEST)
                    if not chunk:
                        break
                    data += chunk
                try:
                    request = json.loads(data.split(b"\n", 1)[0] or b"{}")
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                except ValueError:
                    reply: dict[str, Any] = {"error": "a request is one JSON object a line"}
                else:
                    reply = self._answer(request)
                conn.sendall(json.dumps(reply, sort_keys=True).encode() + b"\n")
            except OSError as e:
                _log.debug("control client: %s", e)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def query_status(path: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the daemon at ``path`` for its status; BackendError when no daemon answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b'{"request": "status"}\n')
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data.endswith(b"\n"):
                    break
    except OSError as e:
        raise BackendError(
            f"no imaguard daemon answers on {path}: {e.strerror or e}"
            " (is it running? is --socket right?)"
        ) from e
    try:
        reply = json.loads(data)
    except ValueError as e:
        raise BackendError(f"{path}: the daemon's answer is not JSON") from e
    if not isinstance(reply, dict):
        raise BackendError(f"{path}: the daemon's answer is not a JSON object")
    if "error" in reply:
        raise BackendError(f"{path}: the daemon refused: {reply['error']}")
    return reply
