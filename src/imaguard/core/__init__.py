"""The integrity core: the Guard, Decisions, the integrity cache and the audit trail."""

from imaguard.core.audit import AuditSink, MemoryAudit
from imaguard.core.cache import IntegrityCache
from imaguard.core.decision import ActionResult, Decision, Outcome
from imaguard.core.guard import MODES, Guard
from imaguard.core.objects import current_subject, file_object

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
