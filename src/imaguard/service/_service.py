"""The worker's state: config, Guard and Enforcer; status answers and SIGHUP reloads.

A reload re-reads the config and builds a new Guard; if anything fails, the old one stays
in force and the error names the key at fault (a reload never denies everything meanwhile,
and never allows everything either). The swap is atomic (``Enforcer.swap_guard``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from imaguard.errors import Error
from imaguard.service._build import build_guard, hand_over_log
from imaguard.service._config import Config, load_config
from imaguard.service._control import status_document

__all__ = ["Service", "close_quietly"]

_log = logging.getLogger(__name__)

OLD_GUARD_GRACE = 2.0  # seconds a swapped-out Guard stays open for decisions still using it
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

    @property
    def mode(self) -> str:
        return "permissive" if self.permissive else self.cfg.mode

    def status(self) -> dict[str, Any]:
        with self._lock:
            cfg, guard = self.cfg, self.guard
        pset = guard.policies
        owners = {p.name: p.owner for p in cfg.policies}
        policies = [
            {
                "name": name,
                "owner": owners.get(name),
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
        )

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("request") == "status":
            return self.status()
        return {"error": f"unknown request {request.get('request')!r} (known: status)"}

    def reload(self) -> bool:
        """Re-read the config and swap in a new Guard; on any error keep the old one."""
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
        self.enforcer.swap_guard(guard)
        with self._lock:
            self.cfg, self.guard = cfg, guard
        self.reloads += 1
        self.last_reload_error = None
        timer = threading.Timer(OLD_GUARD_GRACE, close_quietly, args=(old_guard,))
        timer.daemon = True
        timer.start()
        _log.info("configuration reloaded from %s", cfg.source)
        self._notify("reloaded")
        return True


def close_quietly(guard: Any) -> None:
    try:
        guard.close()
    except Error as e:
        _log.warning("closing the previous Guard: %s", e)
