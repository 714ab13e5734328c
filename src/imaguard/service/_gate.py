"""The supervisor's gate: what happens to permission events while no worker reads them.

While a worker starts (or restarts), the supervisor reads the group itself: events raised
by the supervisor or the starting worker are allowed at once (the worker must load Python,
its config and its keys, perhaps from a watched filesystem), every other event is **held**
(its process keeps waiting) and answered ``FAN_DENY`` when the worker takes over. Nothing
is ever allowed on behalf of a process other than the daemon's own.

The record layouts are those of fanotify(7): ``struct fanotify_event_metadata`` and
``struct fanotify_response``; with ``FAN_REPORT_PIDFD`` an info record carries a pidfd,
which is closed here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Collection

__all__ = ["FAN_ALLOW", "FAN_DENY", "Gate", "parse_events"]

_log = logging.getLogger(__name__)

FAN_ALLOW = 0x01
FAN_DENY = 0x02
FANOTIFY_METADATA_VERSION = 3
FAN_EVENT_INFO_TYPE_PIDFD = 4
_META = struct.Struct("=IBBHQii")
_INFO_HDR = struct.Struct("=BBH")
_RESPONSE = struct.Struct("=iI")


def parse_events(data: bytes) -> list[tuple[int, int, int]]:
    """``(fd, pid, mask)`` for each event record in one read; pidfds in info records closed."""
    out: list[tuple[int, int, int]] = []
    off = 0
    while off + _META.size <= len(data):
        event_len, vers, _res, meta_len, mask, fd, pid = _META.unpack_from(data, off)
        if event_len < _META.size or vers != FANOTIFY_METADATA_VERSION:
            _log.error("fanotify: unexpected record (version %d, length %d)", vers, event_len)
            break
        info = off + meta_len
        while info + _INFO_HDR.size <= off + event_len:
            kind, _pad, length = _INFO_HDR.unpack_from(data, info)
            if length < _INFO_HDR.size:
                break
            if kind == FAN_EVENT_INFO_TYPE_PIDFD and length >= _INFO_HDR.size + 4:
                (pidfd,) = struct.unpack_from("=i", data, info + _INFO_HDR.size)
                if pidfd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(pidfd)
            info += length
        out.append((fd, pid, mask))
        off += event_len
    return out


class Gate:
    """Reads ``group_fd`` while no worker does: allows ``allowed_pids``, holds the rest."""

    def __init__(self, group_fd: int) -> None:
        self.group_fd = group_fd
        self.held: list[int] = []
        self.allowed = 0
        self.denied = 0

    def respond(self, fd: int, response: int) -> None:
        try:
            os.write(self.group_fd, _RESPONSE.pack(fd, response))
        except OSError as e:  # the event is gone (its process was killed): nothing to answer
            _log.debug("fanotify response for fd %d: %s", fd, e)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def read(self, allowed_pids: Collection[int]) -> int:
        """Read what is queued; returns how many events were read."""
        try:
            data = os.read(self.group_fd, 65536)
        except (BlockingIOError, InterruptedError):
            return 0
        events = parse_events(data)
        for fd, pid, _mask in events:
            if fd < 0:
                continue  # FAN_NOFD: a queue-overflow marker, not a permission event
            if pid in allowed_pids:
                self.respond(fd, FAN_ALLOW)
                self.allowed += 1
            else:
                self.held.append(fd)
        return len(events)

    def release(self) -> int:
        """Answer every held event ``FAN_DENY`` (fail closed); returns how many."""
        held, self.held = self.held, []
        for fd in held:
            self.respond(fd, FAN_DENY)
        self.denied += len(held)
        return len(held)
