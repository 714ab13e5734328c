"""The worker's state: config, Guard and Enforcer; the control protocol's answers
(docs/protocol.md) and SIGHUP reloads.

A reload re-reads the config and builds a new Guard; if anything fails, the old one stays
in force and the error names the key at fault (a reload never denies everything meanwhile,
and never allows everything either). The swap is atomic (``Enforcer.swap_guard``).
Policy changes over the socket (:mod:`imaguard.service._policies`) and reloads exclude
each other.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from imaguard.errors import Error, FileError, PolicyError, UsageError
from imaguard.service._build import build_guard, hand_over_log
from imaguard.service._config import Config, load_config
from imaguard.service._control import status_document
from imaguard.service._decisions import DecisionHub
from imaguard.service._owners import Peer
from imaguard.service._policies import PolicyService
from imaguard.service._protocol import ProtocolError
from imaguard.service._server import Reply
from imaguard.service._trust import TrustService

__all__ = ["Service", "close_quietly"]

_log = logging.getLogger(__name__)

_RESTART_ONLY = (
    "watch",
    "socket",
    "interpreters",
    "workers",
    "queue_limit",
    "open_events",
    "cache_opens",
)


class Service:
    """The worker's state: config, Guard and Enforcer; answers status, performs reloads."""

    def __init__(
        self,
        cfg: Config,
        config_path: str | None,
        guard: Any,
        enforcer: Any,
        *,
        permissive_flag: bool = False,
        supervisor_pid: int | None = None,
        restarts: int = 0,
        gap_ms: float | None = None,
        recovered: int = 0,
        build: Callable[..., Any] = build_guard,
        load: Callable[[str | None], Config] = load_config,
        notify: Callable[[str], None] = lambda _word: None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.guard = guard
        self.enforcer = enforcer
        self.permissive_flag = permissive_flag
        self.supervisor_pid = supervisor_pid if supervisor_pid is not None else os.getpid()
        self.restarts = restarts
        self.gap_ms = gap_ms
        self.recovered = recovered
        self.ready = False
        self.reloads = 0
        self.last_reload_error: str | None = None
        self.started = time.time()
        self._build = build
        self._load = load
        self._notify = notify
        self._lock = threading.Lock()
        # Fixed when the Enforcer was made: permissive or not (a restart changes it).
        self.permissive = cfg.permissive
        self.hub = DecisionHub()
        self.policy_service = PolicyService(
            cfg, lambda: self.guard, flush=getattr(enforcer, "flush", lambda: None)
        )
        self.trust_service = TrustService(
            cfg,
            lambda: self.guard,
            self.policy_service,
            flush=getattr(enforcer, "flush", lambda: None),
        )

    def on_decision(self, event: Any) -> None:
        """The Enforcer's callback: the decision goes to its owners' followers (the
        provenance names the owners: nothing is looked up on the event path)."""
        self.hub.record(event)

    @property
    def mode(self) -> str:
        return "permissive" if self.permissive else self.cfg.mode

    def status(self) -> dict[str, Any]:
        with self._lock:
            cfg, guard = self.cfg, self.guard
        pset = guard.policies
        policies = [
            {
                "name": name,
                "owner": pset.owner(name),
                "lock": str(pset.lock(name)),
                "version": pset.version(name),
            }
            for name in pset.names()
        ]
        return status_document(
            ready=self.ready,
            mode=self.mode,
            watched=cfg.watch,
            policies=policies,
            stats=self.enforcer.stats(),
            pid=self.supervisor_pid,
            worker_pid=os.getpid(),
            restarts=self.restarts,
            last_restart_gap_ms=self.gap_ms,
            recovered_inflight=self.recovered,
            reloads=self.reloads,
            last_reload_error=self.last_reload_error,
            config=cfg.source,
            state=cfg.state,
            uptime_s=round(time.time() - self.started, 3),
            log=_log_health(guard),
        )

    # -- the control protocol -------------------------------------------------------------
    def handle(self, request: dict[str, Any], peer: Peer, fds: list[int]) -> Reply:
        """Answer one control request (docs/protocol.md); ProtocolError for a refusal."""
        op = request.get("op")
        if not isinstance(op, str) or op not in _OPS:
            raise ProtocolError(
                "unknown-op", f"unknown op {op!r} (known: {', '.join(sorted(_OPS))})"
            )
        if op in _CHANGES:
            return Reply(self.policy_service.change(peer, op, request))
        if op in _TRUST_CHANGES:
            return Reply(self.trust_service.change(peer, op, request, fds))
        if op == "decisions":
            return self._decisions(peer, request)
        ps = self.policy_service
        if op == "whoami":  # always answered: how else would a peer learn it owns nothing
            return Reply({**peer.describe(), "owners": ps.owners_of(peer)})
        ps.may_read(peer, op)
        if op == "status":
            return Reply(self.status())
        if op == "policies":
            return Reply({"policies": ps.policies()})
        if op == "digestlists":
            return Reply(self.trust_service.lists())
        if op == "trust_lookup":
            return Reply(self.trust_service.lookup(request))
        if op == "show":
            name = request.get("name")
            if not isinstance(name, str):
                raise ProtocolError("bad-request", "name: a policy name is required")
            return Reply(ps.entry(name, text=True))
        fd = _one_fd(op, fds)
        name = request.get("path")
        if name is not None and not isinstance(name, str):
            raise ProtocolError("bad-request", "path: must be a string")
        if op == "explain":
            return Reply(self._explain(fd, name, peer, request))
        if op == "appraise":
            return Reply(self._appraise(fd, name, request))
        return Reply(self._signature_info(fd, name))

    def _decisions(self, peer: Peer, request: dict[str, Any]) -> Reply:
        mine = self.policy_service.owners_of(peer)
        owner = request.get("owner")
        if owner is not None:
            if not isinstance(owner, str):
                raise ProtocolError("bad-request", "owner: must be a string")
            if owner not in mine:
                raise ProtocolError(
                    "permission-denied",
                    f"decisions: uid {peer.uid} (pid {peer.pid}) may not act for owner "
                    f"{owner!r}, so it does not see its decisions",
                )
            owners = [owner]
        else:
            if not mine:
                raise ProtocolError(
                    "permission-denied",
                    f"decisions: uid {peer.uid} (pid {peer.pid}) acts for no owner",
                )
            owners = mine
        recent = self.hub.recent(owners)
        result = {"decisions": recent, "dropped": self.hub.dropped_recent, "owners": owners}
        if not request.get("follow"):
            return Reply(result)
        follower = self.hub.follow(owners)

        def stream() -> Iterator[dict[str, Any] | None]:
            try:
                while True:
                    items = follower.take(1.0)
                    if not items:
                        yield None
                    for item in items:
                        yield {"decision": item, "dropped": follower.dropped}
            finally:
                self.hub.unfollow(follower)

        return Reply(result, stream())

    def _explain(
        self, fd: int, name: str | None, peer: Peer, request: dict[str, Any]
    ) -> dict[str, Any]:
        from imaguard.core import file_object
        from imaguard.policy import Request, Subject, hook_name, parse_mask

        try:
            hook = hook_name(str(request.get("hook") or "BPRM_CHECK"))
            mask_text = request.get("mask")
            if mask_text is not None and not isinstance(mask_text, (str, int)):
                raise UsageError("mask: a MAY_* name or names joined by '|'")
            bits = parse_mask(mask_text) if mask_text is not None else _default_mask(hook)
        except (UsageError, PolicyError) as e:
            raise ProtocolError("bad-request", str(e)) from e
        try:
            st = os.fstat(fd)
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as e:
            raise ProtocolError("bad-request", f"the passed descriptor: {e.strerror}") from e
        subject = Subject(uid=peer.uid, gid=peer.gid)
        pset = self.guard.policies
        sd = pset.evaluate(Request(hook, bits, subject, file_object(fd, st, real, resolve=False)))
        actions: dict[str, Any] = {}
        for kind in ("measure", "appraise", "audit", "hash"):
            prov = next((p for p in sd.provenance if p.action == kind), None)
            actions[kind] = {
                "required": bool(getattr(sd, kind)),
                "policy": prov.policy if prov is not None and getattr(sd, kind) else None,
                "line": prov.line if prov is not None and getattr(sd, kind) else None,
                "owner": prov.owner if prov is not None and getattr(sd, kind) else None,
            }
        return {
            "path": name or real,
            "hook": hook,
            "mask": bits,
            "actions": actions,
            "appraise_type": sd.appraise_type,
            "provenance": [{**p.to_dict(), "owner": p.owner} for p in sd.provenance],
            "owners": sorted({p.owner for p in sd.provenance if p.owner is not None}),
            "conflict": sd.conflict.to_dict() if sd.conflict is not None else None,
        }

    def _appraise(self, fd: int, name: str | None, request: dict[str, Any]) -> dict[str, Any]:
        from imaguard.appraise import appraise

        require = request.get("require", "signature")
        if require not in ("signature", "digest"):
            raise ProtocolError("bad-request", "require: signature or digest")
        guard = self.guard
        verdict = appraise(fd, guard.keyring, require=require, store=guard.store)
        d = verdict.to_dict()
        d["path"] = name or d["path"]
        return d

    def _signature_info(self, fd: int, name: str | None) -> dict[str, Any]:
        from imaguard.appraise import signature_info

        try:
            info = signature_info(fd, store=self.guard.store)
        except (FileError, Error) as e:
            raise ProtocolError("bad-request", f"signature_info: {e}") from e
        d = info.to_dict()
        d["path"] = name or d["path"]
        return d

    def reload(self) -> bool:
        """Re-read the config and swap in a new Guard; on any error keep the old one."""
        with self.policy_service.lock:
            return self._reload()

    def _reload(self) -> bool:
        self._notify("reloading")
        old_cfg, old_guard = self.cfg, self.guard
        try:
            cfg = self._load(self.config_path)
            if self.permissive_flag:
                cfg = cfg.with_mode("permissive")
            same_state = os.path.abspath(cfg.state) == os.path.abspath(old_cfg.state)
            guard = self._build(cfg, open_log=not same_state)
        except Error as e:
            self.last_reload_error = str(e)
            _log.error("reload refused, the old configuration stays in force: %s", e)
            self._notify(f"reload-failed {e}")
            return False
        for key in _RESTART_ONLY:
            if getattr(cfg, key) != getattr(old_cfg, key):
                _log.warning("%s: %s changed; it takes effect at the next start", cfg.source, key)
        if cfg.permissive != self.permissive:
            _log.warning(
                "%s: mode %s -> %s: permissive mode changes at the next start",
                cfg.source,
                old_cfg.mode,
                cfg.mode,
            )
        if same_state:
            hand_over_log(old_guard, guard)
            # decisions still under way with the old Guard measure into the same log (its
            # appends are serialised) until the Enforcer retires the old Guard
            old_guard._log = guard._log
        self.enforcer.swap_guard(guard, retired=functools.partial(_retire, shared_log=same_state))
        with self._lock:
            self.cfg, self.guard = cfg, guard
        try:
            self.policy_service.rebind(cfg)
        except Error as e:  # the new Guard stands; its owners file could not be read again
            _log.error("reload: owners: %s", e)
        self.trust_service.rebind(cfg)
        self.reloads += 1
        self.last_reload_error = None
        _log.info("configuration reloaded from %s", cfg.source)
        self._notify("reloaded")
        return True


_CHANGES = frozenset({"load", "replace", "append", "remove", "seal"})
_TRUST_CHANGES = frozenset({"digestlist_add", "digestlist_remove"})
_OPS = (
    _CHANGES
    | _TRUST_CHANGES
    | {
        "digestlists",
        "trust_lookup",
        "status",
        "whoami",
        "policies",
        "show",
        "explain",
        "appraise",
        "signature_info",
        "decisions",
    }
)
_EXEC_HOOKS = frozenset({"BPRM_CHECK", "MMAP_CHECK", "MMAP_CHECK_REQPROT", "CREDS_CHECK"})


def _default_mask(hook: str) -> int:
    return 0x1 if hook in _EXEC_HOOKS else 0x4  # MAY_EXEC / MAY_READ, as Guard.process


def _one_fd(op: str, fds: list[int]) -> int:
    if not fds:
        raise ProtocolError("no-fd", f"{op}: pass the open file's descriptor (SCM_RIGHTS)")
    return fds[0]


def _log_health(guard: Any) -> dict[str, Any] | None:
    """The measurement log's ``health()`` (ok, error, failed_appends, entries) for status;
    None before the Guard opened its log. A failed append never changes a decision (the
    Guard audits it, the next access measures again); this is where it shows."""
    store = getattr(guard, "_log", None)
    if store is None:
        return None
    health: dict[str, Any] = store.health().as_dict()
    return health


def _retire(old: Any, *, shared_log: bool) -> None:
    """Close a swapped-out Guard once no decision uses it (``Enforcer.swap_guard`` says when:
    a decision hashing a large file may take seconds); the log it shares stays open."""
    if shared_log:
        old._log = None
    close_quietly(old)


def close_quietly(guard: Any) -> None:
    try:
        guard.close()
    except Error as e:
        _log.warning("closing the previous Guard: %s", e)
