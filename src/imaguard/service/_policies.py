"""The policy service: owners change their own policies over the control socket, and
nothing changes silently (docs/protocol.md; README, "Several owners, one machine").

* Every change is authorised from the peer's kernel-given identity against the owner of
  the policy it touches (:mod:`imaguard.service._owners`).
* Locks and versions persist in ``STATE/policies.json`` (mode 0600, atomic writes) and
  hold across daemon restarts: a seal holds until the machine reboots (it is bound to
  ``/proc/sys/kernel/random/boot_id``), and a name's version never goes back, not even
  after ``remove``.
* Every accepted change is measured into the measurement log (an ``imaguard:policy:NAME:OP``
  entry whose digest is the SHA-256 of the policy text sent, as the kernel measures a
  policy under ``func=POLICY_CHECK``), and every request to change, accepted or refused,
  is written to the audit trail with the peer's identity.

Policies from the config file are changed in the config (and ``SIGHUP``); over the socket
their owner may only seal them.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imaguard._fsutil import atomic_write
from imaguard.errors import Error, PolicyError, PolicyLockedError
from imaguard.service._config import Config, ConfigError
from imaguard.service._owners import Owner, Peer, PeerGoneError, load_owners, owners_for
from imaguard.service._protocol import ProtocolError

if TYPE_CHECKING:
    from imaguard.core import Guard
    from imaguard.crypto import Keyring
    from imaguard.policy import PolicySet

__all__ = ["STATE_FILE", "PolicyService", "PolicyState", "apply_state", "boot_id"]

_log = logging.getLogger(__name__)

STATE_FILE = "policies.json"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
MAX_POLICY_TEXT = 1 << 19  # 512 KiB of rules in one request (a frame is 1 MiB)
_LOCKS = ("open", "append-only", "signed-only", "sealed")


def boot_id() -> str:
    """This boot's id (a seal holds until it changes)."""
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:  # no procfs: a seal then lasts until the state is removed
        return "unknown"


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class PolicyState:
    """``STATE/policies.json``: the policies loaded over the socket, seals, version marks.

    ``policies[name]``: ``origin`` (``socket`` or ``config``), ``owner``, ``lock``,
    ``version``, ``text``, ``signature`` (base64 or null), ``loaded_at``, ``sealed_boot``
    and ``lock_before_seal``. A config policy has a record only while it is sealed.
    ``versions[name]``: the highest version the name ever had.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.policies: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}

    @classmethod
    def load(cls, state_dir: str | None, source: str = "<config>") -> PolicyState:
        if state_dir is None:
            return cls(None)
        st = cls(os.path.join(state_dir, STATE_FILE))
        try:
            with open(st.path, "rb") as f:  # type: ignore[arg-type]
                raw = f.read()
        except FileNotFoundError:
            return st
        except OSError as e:
            raise ConfigError(source, "state", f"{st.path}: cannot read: {e.strerror or e}") from e
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != 1:
                raise ValueError("not a format-1 policy state")
            policies, versions = doc["policies"], doc["versions"]
            if not isinstance(policies, dict) or not isinstance(versions, dict):
                raise ValueError("policies and versions must be objects")
            for name, rec in policies.items():
                if not isinstance(rec, dict) or rec.get("origin") not in ("socket", "config"):
                    raise ValueError(f"policy {name!r}: malformed record")
                if rec.get("lock") not in _LOCKS or type(rec.get("version")) is not int:
                    raise ValueError(f"policy {name!r}: bad lock or version")
                if not isinstance(rec.get("text"), str):
                    raise ValueError(f"policy {name!r}: no text")
                if not isinstance(rec.get("owner"), str) or not rec["owner"]:
                    raise ValueError(f"policy {name!r}: no owner")
                if rec.get("signature") is not None and not isinstance(rec["signature"], str):
                    raise ValueError(f"policy {name!r}: the signature must be base64 text")
                if type(rec.get("loaded_at", 0)) not in (int, float):
                    raise ValueError(f"policy {name!r}: loaded_at must be a number")
            if not all(type(v) is int for v in versions.values()):
                raise ValueError("versions must be integers")
        except (ValueError, KeyError) as e:
            raise ConfigError(
                source, "state", f"{st.path}: corrupt policy state ({e}); nothing was loaded"
            ) from e
        st.policies, st.versions = policies, versions
        return st

    def save(self) -> None:
        if self.path is None:
            return
        doc = {"format": 1, "policies": self.policies, "versions": self.versions}
        atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode(), mode=0o600)

    def copy(self) -> PolicyState:
        other = PolicyState(self.path)
        other.policies = copy.deepcopy(self.policies)
        other.versions = dict(self.versions)
        return other

    def mark(self, name: str, version: int) -> None:
        self.versions[name] = max(version, self.versions.get(name, 0))


def _owner_keyring(owner: Owner | None) -> Keyring | None:
    from imaguard.crypto import Keyring

    if owner is None or owner.keyring is None:
        return None
    return Keyring.load(owner.keyring)


def apply_state(pset: PolicySet, cfg: Config) -> None:
    """Put the persisted policy state over the config's policies in ``pset``.

    Policies loaded over the socket come back with their lock and version; a seal of this
    boot holds (a config policy sealed this boot keeps the text it was sealed with, and a
    change to its file waits for the reboot); a seal of an earlier boot has lapsed. A
    config file whose ``#@ version`` is older than a version the name had is refused
    (rollback), as is a socket policy whose stored signature no longer verifies.
    """
    from imaguard.policy import Lock, parse_policy

    state = PolicyState.load(cfg.state, cfg.source)
    owners = load_owners(cfg.owners)
    boot = boot_id()
    config_names = {p.name for p in cfg.policies}
    marked = False
    for i, spec in enumerate(cfg.policies):
        v = pset.policy(spec.name).version
        seen = state.versions.get(spec.name, 0)
        rec = state.policies.get(spec.name)
        sealed_now = rec is not None and rec.get("sealed_boot") == boot
        if v is not None and v < seen and not sealed_now:
            raise ConfigError(
                cfg.source,
                f"policy[{i}]",
                f"{spec.name}: version {v} is older than version {seen} seen before "
                "(rollback refused)",
            )
        if v is not None and v > seen:  # a config file's '#@ version N' is remembered too
            state.mark(spec.name, v)
            marked = True
    if marked and state.path is not None:
        try:
            os.makedirs(os.path.dirname(state.path), mode=0o700, exist_ok=True)
            state.save()
        except OSError as e:
            raise ConfigError(cfg.source, "state", f"{state.path}: {e.strerror or e}") from e
    for name, rec in sorted(state.policies.items(), key=lambda kv: kv[1].get("loaded_at", 0)):
        sealed = rec.get("sealed_boot") == boot
        lock = rec["lock"] if sealed or rec["lock"] != "sealed" else rec.get("lock_before_seal")
        if lock not in _LOCKS:
            lock = "open"
        if rec["origin"] == "config":
            if name not in config_names or not sealed:
                continue  # the seal lapsed (reboot) or the policy left the config
            policy = parse_policy(rec["text"], mode="imaguard", source=f"{name} (sealed)")
            if policy.text() != pset.policy(name).text():
                _log.warning(
                    "%s: the config changed a policy sealed this boot; the sealed text stays "
                    "until reboot",
                    name,
                )
            pset.reinstate(
                name, policy, version=rec["version"], lock=Lock.SEALED, owner=rec["owner"]
            )
            continue
        if name in config_names:
            raise ConfigError(
                cfg.source,
                "policy",
                f"{name!r} is already a policy loaded over the socket by owner "
                f"{rec['owner']!r}; give the config's policy another name",
            )
        source = f"{name} (loaded over the socket)"
        try:
            if rec.get("signature") is not None:
                ring = _owner_keyring(owners.get(rec["owner"]))
                data, sig = rec["text"].encode(), base64.b64decode(rec["signature"])
                pset.add_signed(
                    name,
                    data,
                    sig,
                    keyring=ring,
                    lock="open",
                    owner=rec["owner"],
                    version=rec["version"],
                    source=source,
                )
                pset.reinstate(
                    name,
                    pset.policy(name),
                    version=rec["version"],
                    lock=Lock(lock),
                    owner=rec["owner"],
                )
            else:
                policy = parse_policy(rec["text"], mode="imaguard", source=source)
                pset.reinstate(
                    name, policy, version=rec["version"], lock=Lock(lock), owner=rec["owner"]
                )
        except (Error, ValueError) as e:
            raise ConfigError(cfg.source, "state", f"{STATE_FILE}: policy {name!r}: {e}") from e


@dataclass(frozen=True)
class _Change:
    op: str
    name: str
    owner: str | None
    text: str | None


class PolicyService:
    """The policy operations of the control protocol, for one worker.

    ``guard`` returns the Guard in force (a reload swaps it); ``flush`` drops the kernel's
    cached allows after a change; every change runs under one lock, also against reloads.
    """

    def __init__(
        self,
        cfg: Config,
        guard: Callable[[], Guard],
        *,
        flush: Callable[[], None] = lambda: None,
    ) -> None:
        self.lock = threading.RLock()
        self._guard = guard
        self._flush = flush
        self.rebind(cfg)

    def rebind(self, cfg: Config) -> None:
        """Take a (re)loaded config: its owners and the persisted state."""
        with self.lock:
            self.cfg = cfg
            self.owners: dict[str, Owner] = load_owners(cfg.owners)
            self.state = PolicyState.load(cfg.state, cfg.source)
            self.config_names = {p.name for p in cfg.policies}
            self.started = time.time()

    # -- identity ---------------------------------------------------------------------
    def owners_of(self, peer: Peer) -> list[str]:
        try:
            return owners_for(peer, self.owners)
        except PeerGoneError as e:
            raise ProtocolError("peer-gone", str(e)) from e

    def may_read(self, peer: Peer, op: str) -> None:
        if self.cfg.read_access == "everyone":
            return
        if op == "status" and peer.uid == 0:
            return
        if not self.owners_of(peer):
            raise ProtocolError(
                "permission-denied",
                f'{op}: this daemon lets only owners read (read_access = "owners"); '
                f"uid {peer.uid} (pid {peer.pid}) acts for no owner",
            )

    def _authorise(self, peer: Peer, owner: str, what: str) -> None:
        if owner not in self.owners_of(peer):
            who = peer.describe()
            raise ProtocolError(
                "permission-denied",
                f"{what}: uid {who['uid']} (pid {who['pid']}, {who.get('exe') or '?'}) "
                f"may not act for owner {owner!r}",
            )

    # -- reading ------------------------------------------------------------------------
    def entry(self, name: str, *, text: bool = False) -> dict[str, Any]:
        pset = self._guard().policies
        try:
            policy = pset.policy(name)
        except PolicyError:
            raise ProtocolError("no-such-policy", f"no policy named {name!r}") from None
        rec = self.state.policies.get(name, {})
        origin = "config" if name in self.config_names else "socket"
        body = policy.text()
        d: dict[str, Any] = {
            "name": name,
            "owner": pset.owner(name),
            "lock": str(pset.lock(name)),
            "version": pset.version(name),
            "rules": len(policy),
            "loaded_at": rec.get("loaded_at", self.started),
            "origin": origin,
            "digest": _digest(body),
        }
        if text:
            d["text"] = body
        return d

    def policies(self) -> list[dict[str, Any]]:
        return [self.entry(n) for n in self._guard().policies.names()]

    # -- changing -----------------------------------------------------------------------
    def change(self, peer: Peer, op: str, req: dict[str, Any]) -> dict[str, Any]:
        """One change request: authorise, apply, persist, measure, audit (also refusals)."""
        raw = req.get("name")
        name = raw if isinstance(raw, str) else repr(raw)
        owner: str | None = None
        with self.lock:
            try:
                name = _name(req)
                owner = self._owner_for(peer, op, name, req)
                change = self._apply(peer, op, name, owner, req)
                result = self.entry(name) if op != "remove" else {"name": name, "removed": True}
            except ProtocolError as e:
                if owner is None and op != "load":
                    with contextlib.suppress(PolicyError):
                        owner = self._guard().policies.owner(name)  # whose policy it was
                self._audit(peer, op, name, owner, req, error=e)
                raise
            self._audit(peer, op, name, owner, req, error=None, change=change)
            return result

    def _owner_for(self, peer: Peer, op: str, name: str, req: dict[str, Any]) -> str:
        mine = self.owners_of(peer)
        if op == "load":
            asked = req.get("owner")
            if asked is not None and not isinstance(asked, str):
                raise ProtocolError("bad-request", "owner: must be a string")
            if asked is not None:
                self._authorise(peer, asked, f"load {name}")
                return asked
            if not mine:
                who = peer.describe()
                raise ProtocolError(
                    "permission-denied",
                    f"load {name}: uid {who['uid']} (pid {who['pid']}, "
                    f"{who.get('exe') or '?'}) acts for no owner (owners: {self.cfg.owners})",
                )
            if len(mine) > 1:
                raise ProtocolError(
                    "ambiguous-owner",
                    f"load {name}: this peer acts for {', '.join(mine)}; name one (--owner)",
                )
            return mine[0]
        pset = self._guard().policies
        try:
            owner = pset.owner(name)
        except PolicyError:
            raise ProtocolError("no-such-policy", f"no policy named {name!r}") from None
        if owner is None:
            raise ProtocolError("permission-denied", f"{op} {name}: the policy has no owner")
        self._authorise(peer, owner, f"{op} {name}")
        return owner

    def _apply(self, peer: Peer, op: str, name: str, owner: str, req: dict[str, Any]) -> _Change:
        guard = self._guard()
        pset = guard.policies
        before, saved = pset.snapshot(), self.state.copy()
        text: str | None = None
        try:
            if op == "seal":
                text = self._seal(pset, name, owner)
            elif op == "remove":
                self._remove(pset, name)
            else:
                text = _text(req)
                self._update(pset, op, name, owner, text, req)
            self.state.save()
            measure_change(guard, f"imaguard:policy:{name}:{op}", (text or "").encode())
        except ProtocolError:
            pset.restore(before)
            self.state = saved
            raise
        except (OSError, Error) as e:
            pset.restore(before)
            self.state = saved
            try:
                self.state.save()
            except OSError as e2:
                _log.error("policy state not restored on disk: %s", e2)
            _log.exception("%s %s: not done", op, name)
            raise ProtocolError("internal", f"{op} {name}: not done: {e}") from e
        guard.reload()
        self._flush()
        _log.info("policy %s: %s by owner %s (pid %d)", name, op, owner, peer.pid)
        return _Change(op, name, owner, text)

    def _check_version(self, name: str, version: int, current: int | None) -> None:
        floor = max(current or 0, self.state.versions.get(name, 0))
        if version <= floor:
            raise ProtocolError(
                "rollback",
                f"{name}: version {version} is not newer than {floor} (rollback refused)",
            )

    def _update(
        self, pset: PolicySet, op: str, name: str, owner: str, text: str, req: dict[str, Any]
    ) -> None:
        from imaguard.policy import Lock, Policy, parse_policy

        version = req.get("version")
        if version is not None and (type(version) is not int or not 1 <= version < 1 << 62):
            raise ProtocolError("bad-request", "version: must be a positive integer")
        sig_b64 = req.get("signature")
        signature: bytes | None = None
        if sig_b64 is not None:
            try:
                signature = base64.b64decode(sig_b64, validate=True)
            except (ValueError, TypeError) as e:
                raise ProtocolError("bad-request", "signature: must be base64") from e
        given = req.get("source")
        source = given if isinstance(given, str) else f"<{op} {name}>"
        try:
            parsed = parse_policy(text, mode="imaguard", source=source)
        except PolicyError as e:
            raise ProtocolError("bad-policy", str(e)) from e
        ring = _owner_keyring(self.owners.get(owner)) if signature is not None else None
        if signature is not None:
            self._verify(text, signature, ring, owner, source)
        if op == "load":
            if name in pset.names():
                raise ProtocolError("exists", f"a policy named {name!r} is already loaded")
            lock = req.get("lock", "open")
            if lock not in _LOCKS:
                raise ProtocolError("bad-request", f"lock: must be one of {', '.join(_LOCKS)}")
            v = version if version is not None else (parsed.version or 1)
            self._check_version(name, v, None)
            if lock == "signed-only":
                if signature is None:
                    raise ProtocolError(
                        "bad-signature", f"{name}: a signed-only policy needs a signature"
                    )
                if parsed.version is None or v != parsed.version:
                    raise ProtocolError(
                        "locked",
                        f"{source}: a signed-only policy must carry '#@ version N' inside the "
                        "signed file (and no other --version)",
                    )
            self._pset(
                lambda: pset.reinstate(name, parsed, version=v, lock=Lock(lock), owner=owner)
            )
            self.state.policies[name] = {
                "origin": "socket",
                "owner": owner,
                "lock": lock,
                "version": v,
                "text": text,
                "signature": sig_b64,
                "loaded_at": time.time(),
                "sealed_boot": boot_id() if lock == "sealed" else None,
                "lock_before_seal": "open" if lock == "sealed" else None,
            }
            self.state.mark(name, v)
            return
        if name in self.config_names:
            raise ProtocolError(
                "config-policy",
                f"{name}: this policy comes from {self.cfg.source}; change it there and "
                "send SIGHUP (over the socket its owner may only seal it)",
            )
        current = pset.version(name)
        lock = pset.lock(name)
        if lock is Lock.SEALED:
            raise ProtocolError("locked", f"{name}: the policy is sealed; no change until reboot")
        if op == "append":
            old = pset.policy(name)
            parsed = Policy(old.rules + parsed.rules, old.source, old.mode, parsed.version)
            text = (
                old.text() + text
                if old.text().endswith("\n") or not old.text()
                else (old.text() + "\n" + text)
            )
        v = version if version is not None else (parsed.version or current + 1)
        self._check_version(name, v, current)
        if lock is Lock.SIGNED_ONLY:
            if signature is None or op == "append":
                raise ProtocolError(
                    "bad-signature",
                    f"{name}: the policy is signed-only; send the whole policy file signed "
                    "by a key of the owner's keyring (replace --signature)",
                )
            if parsed.version is None or v != parsed.version:
                raise ProtocolError(
                    "locked", f"{source}: a signed-only update carries '#@ version N' inside"
                )
        if lock is Lock.APPEND_ONLY and parsed.rules[: len(pset.policy(name).rules)] != (
            pset.policy(name).rules
        ):
            raise ProtocolError(
                "locked",
                f"{name}: the policy is append-only; keep every existing rule, in order, "
                "and only add after them (or use append)",
            )
        self._pset(lambda: pset.reinstate(name, parsed, version=v, lock=lock, owner=owner))
        rec = self.state.policies[name]
        rec.update(
            version=v,
            text=text,
            loaded_at=time.time(),
            signature=sig_b64 if lock is Lock.SIGNED_ONLY or op == "replace" else None,
        )
        self.state.mark(name, v)

    def _verify(
        self, text: str, signature: bytes, ring: Keyring | None, owner: str, source: str
    ) -> None:
        from imaguard.appraise import appraise

        if ring is None:
            raise ProtocolError(
                "bad-signature",
                f"{source}: owner {owner!r} has no policy keyring (keyring in its owners file)",
            )
        verdict = appraise(text.encode(), ring, value=signature)
        if not verdict.passed:
            raise ProtocolError(
                "bad-signature",
                f"{source}: the signature does not verify against the keyring of owner {owner!r} "
                f"({verdict.describe()})",
            )

    def _seal(self, pset: PolicySet, name: str, owner: str) -> str:
        from imaguard.policy import Lock

        lock = pset.lock(name)
        if lock is Lock.SEALED:
            raise ProtocolError("locked", f"{name}: already sealed")
        self._pset(lambda: pset.set_lock(name, Lock.SEALED))
        text = pset.policy(name).text()
        rec = self.state.policies.get(name)
        if rec is None or rec.get("origin") == "config":
            # a config policy: keep what is sealed now, for restarts this boot (a record
            # left from an earlier boot's seal is replaced whole)
            rec = self.state.policies[name] = {
                "origin": "config",
                "owner": owner,
                "version": pset.version(name),
                "text": text,
                "signature": None,
                "loaded_at": time.time(),
            }
        rec.update(lock="sealed", sealed_boot=boot_id(), lock_before_seal=str(lock))
        return text

    def _remove(self, pset: PolicySet, name: str) -> None:
        from imaguard.policy import Lock

        if name in self.config_names:
            raise ProtocolError(
                "config-policy",
                f"{name}: this policy comes from {self.cfg.source}; remove it there",
            )
        if pset.lock(name) is not Lock.OPEN:
            raise ProtocolError("locked", f"{name}: a {pset.lock(name)} policy cannot be removed")
        version = pset.version(name)
        self._pset(lambda: pset.remove(name))
        self.state.policies.pop(name, None)
        self.state.mark(name, version)

    @staticmethod
    def _pset(op: Callable[[], None]) -> None:
        try:
            op()
        except PolicyLockedError as e:
            raise ProtocolError("locked", str(e)) from e
        except PolicyError as e:
            raise ProtocolError("bad-policy", str(e)) from e

    def _audit(
        self,
        peer: Peer,
        op: str,
        name: str,
        owner: str | None,
        req: dict[str, Any],
        *,
        error: ProtocolError | None,
        change: _Change | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "type": "POLICY_CHANGE",
            "op": op,
            "policy": name,
            "owner": owner,
            "peer": peer.describe(),
            "result": "refused" if error is not None else "accepted",
        }
        if error is not None:
            record["error"] = error.code
            record["message"] = error.message
        else:
            pset = self._guard().policies
            if op != "remove":
                record["version"] = pset.version(name)
                record["lock"] = str(pset.lock(name))
            if change is not None and change.text is not None:
                record["digest"] = _digest(change.text)
        if isinstance(req.get("source"), str):
            record["source"] = req["source"]
        audit = self._guard().audit
        if audit is not None:
            audit.emit(record)
        level = logging.WARNING if error is not None else logging.INFO
        _log.log(
            level,
            "policy change %s %s by pid %d: %s",
            op,
            name,
            peer.pid,
            record["result"] + (f" ({error.code})" if error else ""),
        )


def measure_change(guard: Guard, name: str, data: bytes) -> None:
    """One measurement of a change made over the socket: an ``ima-ng`` entry named ``name``
    whose digest is that of ``data`` (a signature template would carry no signature)."""
    from imaguard.formats.template import TemplateDescriptor
    from imaguard.measure import buffer_entry

    template = guard.template
    if "sig" in template.name or template.name == "ima-buf":
        template = TemplateDescriptor.lookup("ima-ng")
    guard.log.append(buffer_entry(name, data, template, ima_hash=guard.ima_hash))


def _name(req: dict[str, Any]) -> str:
    name = req.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError("bad-request", "name: a policy name (a non-empty string) is required")
    if any(c.isspace() for c in name) or "=" in name or "/" in name or len(name) > 128:
        raise ProtocolError("bad-request", f"name: bad policy name {name!r} (no spaces, '=', '/')")
    return name


def _text(req: dict[str, Any]) -> str:
    text = req.get("text")
    if not isinstance(text, str):
        raise ProtocolError("bad-request", "text: the policy text (a string) is required")
    if len(text.encode()) > MAX_POLICY_TEXT:
        raise ProtocolError("bad-request", f"text: at most {MAX_POLICY_TEXT} bytes")
    return text
