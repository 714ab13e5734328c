"""sd_notify(3) and sd_listen_fds(3) without a dependency: a datagram to ``$NOTIFY_SOCKET``.

``notify("READY=1", "STATUS=...")`` sends one datagram of newline-separated assignments;
``fds`` go along as SCM_RIGHTS (``FDSTORE=1``: systemd keeps the fanotify fd while the
service restarts). Without ``$NOTIFY_SOCKET`` (not started by systemd) nothing is sent.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence

__all__ = ["listen_fds", "monotonic_usec", "notify"]

_log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


def _address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr[0] == "@":
        return "\0" + addr[1:]  # abstract namespace
    if addr[0] != "/":
        return None  # vsock and other forms are not needed here
    return addr


def notify(
    *assignments: str, fds: Sequence[int] = (), env: Mapping[str, str] | None = None
) -> bool:
    """Send ``assignments`` (``"READY=1"``, ...) to the service manager; True when sent."""
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    payload = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            ancillary = []
            if fds:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            s.sendmsg([payload], ancillary, 0, addr)
    except OSError as e:
        _log.warning("sd_notify to %s failed: %s", addr.lstrip("\0"), e)
        return False
    return True


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``RELOADING=1`` wants it in ``MONOTONIC_USEC=``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def listen_fds(env: Mapping[str, str] | None = None) -> dict[str, list[int]]:
    """The fds systemd passed (``$LISTEN_FDS``, named by ``$LISTEN_FDNAMES``), for this pid only.

    Fds restored from the fd store carry the ``FDNAME=`` they were stored with.
    """
    env = os.environ if env is None else env
    try:
        if int(env.get("LISTEN_PID", "-1")) != os.getpid():
            return {}
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    out: dict[str, list[int]] = {}
    for i in range(count):
        name = names[i] if i < len(names) else "unknown"
        out.setdefault(name, []).append(SD_LISTEN_FDS_START + i)
    return out
