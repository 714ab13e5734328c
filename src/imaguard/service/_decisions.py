"""Decisions by owner: every owner can see the decisions its rules took part in.

The Enforcer calls :meth:`DecisionHub.record` after it has answered the kernel; recording
never blocks: a bounded ring of recent decisions (the oldest dropped) and, per follower,
a bounded queue whose overflow drops the oldest and counts it (``dropped``).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DecisionHub", "Follower"]

RECENT = 1000
FOLLOW_BUFFER = 1024


class Follower:
    """One ``decisions --follow`` client: its owners and its bounded queue."""

    def __init__(self, owners: frozenset[str], maxlen: int = FOLLOW_BUFFER) -> None:
        self.owners = owners
        self.queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=maxlen)
        self.dropped = 0
        self.wake = threading.Event()

    def push(self, record: dict[str, Any]) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(record)
        self.wake.set()

    def take(self, timeout: float) -> list[dict[str, Any]]:
        """What arrived, waiting up to ``timeout`` seconds for something."""
        if not self.queue:
            self.wake.wait(timeout)
        self.wake.clear()
        out: list[dict[str, Any]] = []
        while self.queue:
            try:
                out.append(self.queue.popleft())
            except IndexError:
                break
        return out


class DecisionHub:
    """Recent decisions, and the followers that stream new ones."""

    def __init__(self, recent: int = RECENT) -> None:
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=recent)
        self._followers: set[Follower] = set()
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.dropped_recent = 0

    def record(self, event: Any, owner_of: Mapping[str, str | None] | None = None) -> None:
        """One answered event (an ``EventDecision``).

        A PolicySet's provenance names each policy's owner already; ``owner_of`` (policy ->
        owner) only fills in provenance made without owners.
        """
        owner_of = owner_of or {}
        decision = getattr(event, "decision", None)
        provenance = list(decision.provenance) if decision is not None else []
        owners = sorted(
            {o for p in provenance if (o := p.owner or owner_of.get(p.policy)) is not None}
        )
        if not owners:
            return
        appraise = decision.actions.get("appraise") if decision is not None else None
        record = {
            "seq": next(self._seq),
            "time": round(time.time(), 6),
            "path": event.path,
            "hook": event.hook,
            "mask": event.mask,
            "pid": event.pid,
            "exe": event.exe,
            "allowed": bool(event.allowed),
            "permissive": bool(event.permissive_override),
            "owners": owners,
            "provenance": [
                {**p.to_dict(), "owner": p.owner or owner_of.get(p.policy)} for p in provenance
            ],
            "reason": event.reason,
            "cause": appraise.cause if appraise is not None else None,
        }
        with self._lock:
            if len(self._recent) == self._recent.maxlen:
                self.dropped_recent += 1
            self._recent.append(record)
            followers = list(self._followers)
        for f in followers:
            if f.owners & set(owners):
                f.push(record)

    def recent(self, owners: Iterable[str]) -> list[dict[str, Any]]:
        want = set(owners)
        with self._lock:
            return [r for r in self._recent if want & set(r["owners"])]

    def follow(self, owners: Iterable[str]) -> Follower:
        f = Follower(frozenset(owners))
        with self._lock:
            self._followers.add(f)
        return f

    def unfollow(self, f: Follower) -> None:
        with self._lock:
            self._followers.discard(f)
