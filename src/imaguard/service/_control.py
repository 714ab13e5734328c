"""The status document (``imaguard status --json``) and asking a daemon for it.

The control socket itself is :mod:`imaguard.service._server` (docs/protocol.md).
"""

from __future__ import annotations

from typing import Any

__all__ = ["STATUS_KEYS", "query_status", "status_document"]

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


def query_status(path: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the daemon at ``path`` for its status; BackendError when no daemon answers."""
    from imaguard.service._client import Client

    with Client(path, timeout=timeout) as client:
        return client.status()
