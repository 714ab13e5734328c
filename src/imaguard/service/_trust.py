"""Digest lists over the control socket: add and remove lists in the daemon's trust database,
look digests up (docs/protocol.md, ``digestlist_add`` and friends).

Only peers that act for an owner whose file says ``digestlists = true`` may add or remove
lists; a list must verify against the config's ``digestlist_keyrings`` (refused whole
otherwise, the database unchanged). Every accepted change is measured into the log (an
``imaguard:digestlist:NAME:OP`` entry whose digest is the SHA-256 of the list file) and
every request to change is audited (``DIGESTLIST_CHANGE``). After a change the Guard's
cache and the kernel's cached allows are dropped, so a removed list stops vouching at once.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imaguard._fsutil import pread_all
from imaguard.errors import Error, FormatError, UsageError, VerificationError
from imaguard.service._config import Config
from imaguard.service._owners import Peer
from imaguard.service._policies import measure_change
from imaguard.service._protocol import ProtocolError

if TYPE_CHECKING:
    from imaguard.core import Guard
    from imaguard.service._policies import PolicyService

__all__ = ["TrustService"]

_log = logging.getLogger(__name__)

MAX_LIST = 768 << 10  # a list sent inline (a frame is 1 MiB, base64 grows it 4/3)
MAX_LIST_FD = 1 << 30  # a list passed as a descriptor


class TrustService:
    """The trust-database operations of one worker."""

    def __init__(
        self,
        cfg: Config,
        guard: Callable[[], Guard],
        policies: PolicyService,
        *,
        flush: Callable[[], None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self._guard = guard
        self._policies = policies
        self._flush = flush
        self.lock = threading.Lock()
        self._ring: Any = None

    def rebind(self, cfg: Config) -> None:
        with self.lock:
            self.cfg = cfg
            self._ring = None

    def _keyring(self) -> Any:
        from imaguard.crypto import Keyring

        if not self.cfg.digestlist_keyrings:
            raise ProtocolError(
                "bad-signature",
                "this daemon accepts no digest lists: digestlist_keyrings is not configured",
            )
        if self._ring is None:
            try:
                self._ring = Keyring.load(*self.cfg.digestlist_keyrings)
            except Error as e:
                raise ProtocolError("internal", f"digestlist_keyrings: {e}") from e
        return self._ring

    def _trust(self) -> Any:
        trust = self._guard().trust
        if trust is None:
            raise ProtocolError("internal", "this daemon has no trust database")
        return trust

    def _authorise(self, peer: Peer, op: str) -> str:
        owners = self._policies.owners
        mine = [n for n in self._policies.owners_of(peer) if owners[n].digestlists]
        if not mine:
            raise ProtocolError(
                "permission-denied",
                f"{op}: uid {peer.uid} (pid {peer.pid}) acts for no owner allowed to change "
                "digest lists (digestlists = true in its owners file)",
            )
        return mine[0]

    # -- reading ---------------------------------------------------------------------------
    def lists(self) -> dict[str, Any]:
        trust = self._trust()
        trust.refresh()
        return {"lists": [li.to_dict() for li in trust.lists()], "generation": trust.generation}

    def lookup(self, req: dict[str, Any]) -> dict[str, Any]:
        digest_hex = req.get("digest")
        algorithm = req.get("algorithm", "sha256")
        if not isinstance(digest_hex, str) or not isinstance(algorithm, str):
            raise ProtocolError("bad-request", "digest: hex string; algorithm: a name")
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError as e:
            raise ProtocolError("bad-request", f"digest: not hex ({e})") from e
        trust = self._trust()
        found = trust.lookup(digest, algorithm)
        return {
            "digest": digest_hex.lower(),
            "algorithm": algorithm,
            "lists": [li.to_dict() for li in found],
        }

    # -- changing --------------------------------------------------------------------------
    def change(
        self, peer: Peer, op: str, req: dict[str, Any], fds: list[int] | None = None
    ) -> dict[str, Any]:
        owner: str | None = None
        name = req.get("name") if op == "digestlist_add" else req.get("which")
        with self._policies.lock, self.lock:
            try:
                owner = self._authorise(peer, op)
                if op == "digestlist_add":
                    result, data = self._add(req, fds or [])
                    label = result["name"]
                else:
                    result, data = self._remove(req)
                    label = result["removed"]["name"]
                guard = self._guard()
                measure_change(
                    guard, f"imaguard:digestlist:{label}:{op.removeprefix('digestlist_')}", data
                )
                guard.reload()
                self._flush()
            except ProtocolError as e:
                self._audit(peer, op, name, owner, error=e)
                raise
            self._audit(peer, op, name, owner, error=None, result=result)
            return result

    def _add(self, req: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], bytes]:
        raw, sig = req.get("data"), req.get("signature")
        name = req.get("name")
        if (raw is not None and not isinstance(raw, str)) or (
            sig is not None and not isinstance(sig, str)
        ):
            raise ProtocolError("bad-request", "data (and signature): base64 strings")
        if name is not None and not isinstance(name, str):
            raise ProtocolError("bad-request", "name: a string")
        try:
            signature = base64.b64decode(sig, validate=True) if sig is not None else None
            if raw is not None:
                data = base64.b64decode(raw, validate=True)
            elif fds:
                data = _read_fd(fds[0])
            else:
                raise ProtocolError(
                    "no-fd", "digestlist_add: send the list as data or pass its descriptor"
                )
        except (binascii.Error, ValueError) as e:
            raise ProtocolError("bad-request", f"data: not base64 ({e})") from e
        if raw is not None and len(data) > MAX_LIST:
            raise ProtocolError(
                "bad-request",
                f"data: a list sent inline is at most {MAX_LIST} bytes (pass its descriptor)",
            )
        trust = self._trust()
        try:
            info = trust.add(data, self._keyring(), name=name, signature=signature)
        except VerificationError as e:
            raise ProtocolError("bad-signature", str(e)) from e
        except FormatError as e:
            raise ProtocolError("bad-policy", f"{name or 'list'}: {e}") from e
        except UsageError as e:
            raise ProtocolError("exists", str(e)) from e
        return info.to_dict(), data

    def _remove(self, req: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        which = req.get("which")
        if not isinstance(which, str) or not which:
            raise ProtocolError("bad-request", "which: a list's name or id")
        trust = self._trust()
        try:
            info = trust.remove(which)
        except UsageError as e:
            raise ProtocolError("no-such-policy", str(e)) from e
        return {"removed": info.to_dict()}, b""

    def _audit(
        self,
        peer: Peer,
        op: str,
        name: Any,
        owner: str | None,
        *,
        error: ProtocolError | None,
        result: dict[str, Any] | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "type": "DIGESTLIST_CHANGE",
            "op": op,
            "list": name if isinstance(name, str) else None,
            "owner": owner,
            "peer": peer.describe(),
            "result": "refused" if error is not None else "accepted",
        }
        if error is not None:
            record["error"] = error.code
            record["message"] = error.message
        elif result is not None:
            record["info"] = result.get("removed", result)
        audit = self._guard().audit
        if audit is not None:
            audit.emit(record)
        _log.log(
            logging.WARNING if error else logging.INFO,
            "digest list %s %s by pid %d: %s",
            op,
            name,
            peer.pid,
            record["result"],
        )


def _read_fd(fd: int) -> bytes:
    """A passed list file's bytes (a regular file, at most MAX_LIST_FD)."""
    import os
    import stat

    try:
        st = os.fstat(fd)
    except OSError as e:
        raise ProtocolError("bad-request", f"the passed descriptor: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ProtocolError("bad-request", "the passed descriptor is not a regular file")
    data = pread_all(fd, MAX_LIST_FD)
    if data is None:
        raise ProtocolError("bad-request", f"a digest list is at most {MAX_LIST_FD} bytes")
    return data
