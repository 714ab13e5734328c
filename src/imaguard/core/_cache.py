"""The integrity cache: per file (st_dev, st_ino), what was appraised, measured and audited.

As in the kernel's iint, appraisal results live in per-hook slots (file, mmap, bprm,
creds, read), measurements are remembered per (PCR, template), and audit records are
emitted once per file until it changes. An entry stands only while the file's change
cookie (size, mtime, ctime, inode generation) is unchanged, and the whole cache is
dropped when the epoch changes (policies, keyrings, mode or store). It can be kept in a
state directory (``cache.json``, mode 0600) so separate ``imaguard check`` calls share it.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from imaguard._fsutil import atomic_write
from imaguard.appraise._files import ChangeCookie
from imaguard.appraise._verdict import Verdict

__all__ = ["CacheEntry", "IntegrityCache", "slot_for"]

_SLOTS = {
    "FILE_CHECK": "file",
    "POST_SETATTR": "file",
    "MMAP_CHECK": "mmap",
    "MMAP_CHECK_REQPROT": "mmap",
    "BPRM_CHECK": "bprm",
    "CREDS_CHECK": "creds",
}


def slot_for(rule_func: str | None) -> str:
    """The cache slot an appraise rule writes: file without func=, else by hook (or read)."""
    if rule_func is None:
        return "file"
    return _SLOTS.get(rule_func, "read")


@dataclass
class CacheEntry:
    cookie: ChangeCookie
    slots: dict[str, Verdict] = field(default_factory=dict)
    values: dict[str, bytes | None] = field(default_factory=dict)
    """The stored value each slot's verdict was reached on (a changed value is a miss)."""
    measured: set[tuple[int, str | None]] = field(default_factory=set)
    audited: bool = False
    may_emit_tomtou: bool = False
    """A measured read open happened: the next write open is a ToMToU violation."""
    memo: dict[Any, Any] = field(default_factory=dict)
    """Whole decisions that a repeat of the same request would reproduce without side
    effects (the Guard's memo; never saved): they go with the entry when the file changes
    or the cache is dropped."""


class IntegrityCache:
    """In memory, optionally loaded from and saved to a JSON file."""

    def __init__(self, epoch: str, path: str | os.PathLike[str] | None = None) -> None:
        self.epoch = epoch
        self.path = os.fspath(path) if path is not None else None
        self._entries: dict[tuple[int, int], CacheEntry] = {}
        self._lock = threading.Lock()
        self.hits = 0
        if self.path is not None:
            self._load()

    def lookup(self, cookie: ChangeCookie) -> CacheEntry:
        """The entry for this file, fresh if the cookie changed (the old one is dropped)."""
        with self._lock:
            entry = self._entries.get(cookie.key)
            if entry is None or entry.cookie != cookie:
                entry = CacheEntry(cookie)
                self._entries[cookie.key] = entry
            return entry

    def peek(self, key: tuple[int, int]) -> CacheEntry | None:
        """The entry for (st_dev, st_ino), whatever its cookie (for violation tracking)."""
        with self._lock:
            return self._entries.get(key)

    def rekey(self, entry: CacheEntry, cookie: ChangeCookie) -> None:
        """After imaguard itself changed the file's value (fix mode, hash): keep what is known."""
        with self._lock:
            entry.cookie = cookie
            self._entries[cookie.key] = entry

    def invalidate(self, key: tuple[int, int] | None = None) -> None:
        with self._lock:
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    # -- persistence ---------------------------------------------------------------------
    def _load(self) -> None:
        assert self.path is not None
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            return  # a damaged cache is only a slower start
        if doc.get("epoch") != self.epoch:
            return
        for item in doc.get("entries", []):
            try:
                cookie = ChangeCookie(**item["cookie"])
                entry = CacheEntry(
                    cookie,
                    {k: Verdict.from_dict(v) for k, v in item.get("slots", {}).items()},
                    {
                        k: bytes.fromhex(v) if v is not None else None
                        for k, v in item.get("values", {}).items()
                    },
                    {(int(p), t) for p, t in item.get("measured", [])},
                    bool(item.get("audited", False)),
                )
            except (KeyError, TypeError, ValueError):
                continue
            self._entries[cookie.key] = entry

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            doc = {
                "epoch": self.epoch,
                "entries": [
                    {
                        "cookie": asdict(e.cookie),
                        "slots": {k: v.to_dict() for k, v in e.slots.items()},
                        "values": {
                            k: v.hex() if v is not None else None for k, v in e.values.items()
                        },
                        "measured": sorted([p, t] for p, t in e.measured),
                        "audited": e.audited,
                    }
                    for e in self._entries.values()
                ],
            }
        atomic_write(self.path, json.dumps(doc).encode(), mode=0o600)
