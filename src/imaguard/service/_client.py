"""``imaguard.Client``: the daemon's control protocol from Python (docs/protocol.md).

Every method sends one request and returns the daemon's ``result`` (a dict), except
:meth:`Client.appraise` (a :class:`~imaguard.Verdict`) and :meth:`Client.decisions` (an
iterator). A refusal raises :class:`~imaguard.ServiceError` with the protocol's ``code``;
a daemon that does not answer raises :class:`~imaguard.BackendError`.

The client is cheap: it connects on first use and keeps the connection; it is not safe to
share between threads (make one per thread).
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from imaguard.appraise._verdict import Verdict
from imaguard.errors import BackendError, ServiceError, UsageError
from imaguard.service._protocol import VERSION, Closed, ProtocolError, recv_frame, send_frame

__all__ = ["DEFAULT_SOCKET", "Client", "verdict_from_dict"]

DEFAULT_SOCKET = "/run/imaguard/control.sock"
SOCKET_ENV = "IMAGUARD_SOCKET"

PolicySource = str | os.PathLike[str] | bytes
"""A policy for load/replace/append: a file's path, or its text as bytes."""


def verdict_from_dict(d: dict[str, Any]) -> Verdict:
    """A Verdict from its JSON (``Verdict.to_dict``)."""
    return Verdict.from_dict(d)


class Client:
    """A connection to the imaguard daemon's control socket.

    ``socket``: the socket's path; default ``$IMAGUARD_SOCKET``, else
    ``/run/imaguard/control.sock``. ``timeout``: seconds to wait for each answer.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, timeout: float = 30.0):
        path = socket if socket is not None else os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
        self.path = os.fspath(path)
        self.timeout = timeout
        self._sock: Any = None
        self._next_id = 0

    # -- plumbing -------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.settimeout(self.timeout)
            try:
                deadline = time.monotonic() + min(self.timeout, 2.0)
                while True:
                    try:
                        s.connect(self.path)
                        break
                    except BlockingIOError:  # the daemon's backlog is full for a moment
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
            except OSError as e:
                s.close()
                raise BackendError(
                    f"no imaguard daemon answers on {self.path}: {e.strerror or e}"
                    " (is it running? is --socket right?)"
                ) from e
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, op: str, fd: int | None = None, **params: Any) -> int:
        s = self._connect()
        self._next_id += 1
        request = {"v": VERSION, "op": op, "id": self._next_id, **params}
        try:
            send_frame(s, request, (fd,) if fd is not None else ())
        except ProtocolError as e:
            raise UsageError(f"{op}: the request is too large ({e})") from e
        except OSError as e:
            pending = self._pending_error(s)  # the daemon may have answered (busy) and closed
            self.close()
            if pending is not None:
                raise pending from e
            raise BackendError(f"{self.path}: the daemon hung up: {e.strerror or e}") from e
        return self._next_id

    @staticmethod
    def _pending_error(s: Any) -> ServiceError | None:
        """An error answer already waiting on a connection the daemon closed, if any."""
        try:
            answer, fds = recv_frame(s, idle=0.2, frame_timeout=0.5)
        except (Closed, TimeoutError, OSError, ProtocolError):
            return None
        for fd in fds:
            os.close(fd)
        err = answer.get("error") if not answer.get("ok") else None
        if not isinstance(err, dict):
            return None
        code = str(err.get("code", "internal"))
        return ServiceError(code, f"{err.get('message', 'refused')} [{code}]")

    def _receive(self, op: str) -> dict[str, Any]:
        s = self._connect()
        try:
            answer, fds = recv_frame(s, idle=self.timeout, frame_timeout=self.timeout)
        except (Closed, TimeoutError, OSError) as e:
            self.close()
            why = str(e) or "the connection closed"
            raise BackendError(f"{self.path}: no answer to {op}: {why}") from e
        except ProtocolError as e:
            self.close()
            raise BackendError(f"{self.path}: the daemon's answer is malformed: {e}") from e
        for fd in fds:
            os.close(fd)
        if not answer.get("ok"):
            err = answer.get("error") or {}
            code = str(err.get("code", "internal"))
            if code in ("bad-frame", "timeout", "busy"):
                self.close()
            raise ServiceError(code, f"{err.get('message', op + ': refused')} [{code}]")
        return answer

    def request(self, op: str, fd: int | None = None, **params: Any) -> dict[str, Any]:
        """Send one request; its ``result``. Parameters as docs/protocol.md names them."""
        self._send(op, fd, **params)
        result = self._receive(op).get("result")
        if not isinstance(result, dict):
            raise BackendError(f"{self.path}: the answer to {op} has no result")
        return result

    # -- reading ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``imaguard status --json`` document."""
        return self.request("status")

    def whoami(self) -> dict[str, Any]:
        """How the daemon sees this process, and the owners it may act for."""
        return self.request("whoami")

    def policies(self) -> list[dict[str, Any]]:
        """Every policy in force: name, owner, lock, version, rules, loaded_at, origin."""
        return list(self.request("policies")["policies"])

    def show(self, name: str) -> dict[str, Any]:
        """One policy, with its ``text``."""
        return self.request("show", name=name)

    # -- changing -----------------------------------------------------------------------
    def load(
        self,
        name: str,
        policy: PolicySource,
        *,
        lock: str = "open",
        version: int | None = None,
        signature: bytes | str | os.PathLike[str] | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """Add a policy owned by the owner this process acts for (``owner`` picks one)."""
        text, source, sig = _policy(policy, signature)
        return self.request(
            "load",
            name=name,
            text=text,
            lock=lock,
            version=version,
            signature=sig,
            owner=owner,
            source=source,
        )

    def replace(
        self,
        name: str,
        policy: PolicySource,
        *,
        version: int | None = None,
        signature: bytes | str | os.PathLike[str] | None = None,
    ) -> dict[str, Any]:
        """Replace a policy's rules, as its lock allows, with a newer version."""
        text, source, sig = _policy(policy, signature)
        return self.request(
            "replace", name=name, text=text, version=version, signature=sig, source=source
        )

    def append(
        self, name: str, policy: PolicySource, *, version: int | None = None
    ) -> dict[str, Any]:
        """Add rules after a policy's existing ones."""
        text, source, _ = _policy(policy, None, read_signature=False)
        return self.request("append", name=name, text=text, version=version, source=source)

    def remove(self, name: str) -> dict[str, Any]:
        """Remove an open policy."""
        return self.request("remove", name=name)

    def seal(self, name: str) -> dict[str, Any]:
        """Seal a policy until the machine reboots."""
        return self.request("seal", name=name)

    # -- files: the descriptor is passed ----------------------------------------------------
    def explain(
        self,
        target: int | str | os.PathLike[str],
        hook: str = "BPRM_CHECK",
        mask: str | None = None,
    ) -> dict[str, Any]:
        """What the policies demand of this file for ``hook``, with provenance; no side effect."""
        with _open(target) as (fd, name):
            return self.request("explain", fd, path=name, hook=hook, mask=mask)

    def appraise(
        self, target: int | str | os.PathLike[str], *, require: str = "signature"
    ) -> Verdict:
        """The daemon appraises the open file this process holds, uncached; its Verdict."""
        with _open(target) as (fd, name):
            return verdict_from_dict(self.request("appraise", fd, path=name, require=require))

    def signature_info(self, target: int | str | os.PathLike[str]) -> dict[str, Any]:
        """What is stored for the file, decoded by the daemon (``imaguard show --json``)."""
        with _open(target) as (fd, name):
            return self.request("signature_info", fd, path=name)

    def decisions(
        self, owner: str | None = None, *, follow: bool = False
    ) -> Iterator[dict[str, Any]]:
        """The decisions the owner's rules took part in; with ``follow``, new ones as they come.

        Each item is a decision (docs/protocol.md); a followed stream's items also carry
        ``dropped``, how many this client missed by reading too slowly.
        """
        self._send("decisions", owner=owner, follow=follow)
        first = self._receive("decisions")["result"]
        dropped = int(first.get("dropped", 0))
        for d in first.get("decisions", []):
            yield {**d, "dropped": dropped} if follow else d
        if not follow:
            return
        while True:
            try:
                frame = self._receive_stream()
            except BackendError:
                return
            if frame is None:
                continue
            yield {**frame["decision"], "dropped": frame.get("dropped", 0)}

    def _receive_stream(self) -> dict[str, Any] | None:
        s = self._connect()
        try:
            answer, fds = recv_frame(s, idle=None, frame_timeout=self.timeout)
        except (Closed, OSError, ProtocolError) as e:
            self.close()
            raise BackendError(f"{self.path}: the decision stream ended: {e}") from e
        for fd in fds:
            os.close(fd)
        if not answer.get("ok"):
            err = answer.get("error") or {}
            raise ServiceError(str(err.get("code")), str(err.get("message")))
        return answer if "decision" in answer else None


class _open:  # noqa: N801 - a small context manager used like a function
    """A descriptor for ``target``: the caller's own fd, or one opened here (and closed)."""

    def __init__(self, target: int | str | os.PathLike[str]) -> None:
        self.target = target
        self.fd: int | None = None

    def __enter__(self) -> tuple[int, str]:
        if isinstance(self.target, int):
            try:
                name = os.readlink(f"/proc/self/fd/{self.target}")
            except OSError:
                name = f"<fd {self.target}>"
            return self.target, name
        path = os.fspath(self.target)
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            from imaguard.errors import FileError

            raise FileError(path, f"cannot open: {e.strerror or e}") from e
        return self.fd, os.path.abspath(path)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _policy(
    policy: PolicySource,
    signature: bytes | str | os.PathLike[str] | None,
    *,
    read_signature: bool = True,
) -> tuple[str, str | None, str | None]:
    """(text, source, base64 signature) of a policy given as a path or as bytes.

    A policy given as a path without ``signature`` sends the file's stored value
    (``security.ima``, or the ``.sig`` beside it) when it has a signature.
    """
    from imaguard.errors import FileError

    source: str | None = None
    if isinstance(policy, bytes):
        data = policy
    else:
        source = os.fspath(policy)
        try:
            with open(source, "rb") as f:
                data = f.read((1 << 20) + 1)
        except OSError as e:
            raise FileError(source, f"cannot read the policy: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{source or 'policy'}: not UTF-8 text (byte {e.start})") from e
    raw: bytes | None = None
    if isinstance(signature, bytes):
        raw = signature
    elif signature is not None:
        try:
            with open(signature, "rb") as f:
                raw = f.read(1 << 16)
        except OSError as e:
            raise FileError(os.fspath(signature), f"cannot read: {e.strerror or e}") from e
    elif source is not None and read_signature:
        raw = _stored_signature(source)
    return text, source, base64.b64encode(raw).decode() if raw is not None else None


def _stored_signature(path: str) -> bytes | None:
    """The first signature stored for ``path``: ``security.ima`` (readable by any user who can
    read the file), then ``user.ima``, then the ``.sig`` beside it; None when none is."""
    from imaguard.appraise import signature_info
    from imaguard.appraise._files import open_target
    from imaguard.appraise._sigstore import SidecarStore, XattrStore
    from imaguard.errors import Error

    for store in (XattrStore("security.ima"), XattrStore("user.ima"), SidecarStore()):
        try:
            with open_target(path) as ref:
                raw = store.read(ref)
        except Error:
            continue
        if raw is not None and signature_info(path, value=raw).signed:
            return raw
    return None
