"""Enforcement through fanotify: exec and open permission events decided by the Guard.

:class:`FanotifyGroup` is the group fd (ctypes binding, filesystem marks, ignore marks);
:class:`Enforcer` reads its events, maps each to an IMA hook (see ``_events``), asks the
:class:`imaguard.core.Guard` and answers ``FAN_ALLOW`` / ``FAN_DENY``. The module
docstrings of ``_engine`` and ``_events`` state what is covered and what is not (shared
mmap writes and ignore marks, memfd exec, EPERM, fail-open when the last group fd closes).
No sockets and no config files here: that is ``imaguard.service``.
"""

from imaguard.enforce._engine import ROOT_OWNED, Enforcer, EnforcerStats, EventDecision
from imaguard.enforce._events import (
    DEFAULT_INTERPRETERS,
    DEFAULT_SCRIPT_EXEMPT,
    classify,
    elf_type,
    is_loader,
    open_mask,
)
from imaguard.enforce._fanotify import Event, FanotifyGroup, pack_event, parse_events

__all__ = [
    "DEFAULT_INTERPRETERS",
    "DEFAULT_SCRIPT_EXEMPT",
    "ROOT_OWNED",
    "Enforcer",
    "EnforcerStats",
    "Event",
    "EventDecision",
    "FanotifyGroup",
    "classify",
    "elf_type",
    "is_loader",
    "open_mask",
    "pack_event",
    "parse_events",
]
