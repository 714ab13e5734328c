"""The integrity core: the Guard, Decisions, the integrity cache and the audit trail."""

from imaguard.core._audit import AuditSink, MemoryAudit
from imaguard.core._cache import IntegrityCache
from imaguard.core._decision import ActionResult, Decision, Outcome
from imaguard.core._guard import MODES, Guard
from imaguard.core._objects import current_subject, file_object

__all__ = [
    "MODES",
    "ActionResult",
    "AuditSink",
    "Decision",
    "Guard",
    "IntegrityCache",
    "MemoryAudit",
    "Outcome",
    "current_subject",
    "file_object",
]
