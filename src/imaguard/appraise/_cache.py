"""A verdict cache for the direct calls, used only when asked (``appraise(..., cache=True)``).

An entry stands while the file's :class:`~imaguard.appraise._files.ChangeCookie` (size,
mtime, ctime, inode generation) is unchanged and the stored value, the keyring and the
requirements are the same ones; anything else is a miss. The value itself is part of the
key, so a new signature in a sidecar file (which does not touch the file's ctime) is seen.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from imaguard.appraise._files import ChangeCookie
from imaguard.appraise._verdict import Verdict

__all__ = ["DEFAULT_CACHE", "VerdictCache"]


class VerdictCache:
    """A bounded LRU of verdicts keyed on (file, value, keyring, requirements)."""

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[ChangeCookie, Verdict]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, cookie: ChangeCookie) -> Verdict | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] != cookie:
                if hit is not None:
                    del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return hit[1]

    def put(self, key: Hashable, cookie: ChangeCookie, verdict: Verdict) -> None:
        with self._lock:
            self._entries[key] = (cookie, verdict)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


DEFAULT_CACHE = VerdictCache()
