"""The Decision: what the policy set demanded for one hook on one file, and what happened.

Per action kind (measure, appraise, audit, hash): whether it was **required**, its
**outcome** (``not-required``, ``passed``, ``failed``), the kernel's cause string when it
failed, and the policy and rule line that demanded it. A hook on which no rule applied
reports every action as ``not-required`` - never ``passed``.

A Decision has no truth value: enforcement reads ``decision.allowed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaguard.appraise._verdict import Verdict
from imaguard.policy._policyset import Provenance

__all__ = ["ACTIONS", "ActionResult", "Decision", "Outcome"]

ACTIONS = ("measure", "appraise", "audit", "hash")


class Outcome:
    NOT_REQUIRED = "not-required"
    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True)
class ActionResult:
    required: bool
    outcome: str = Outcome.NOT_REQUIRED
    cause: str | None = None
    policy: str | None = None
    line: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "required": self.required,
            "outcome": self.outcome,
            "cause": self.cause,
            "policy": self.policy,
            "line": self.line,
        }


NOT_REQUIRED = ActionResult(False)


@dataclass(frozen=True)
class Decision:
    """The result of :meth:`imaguard.Guard.process`."""

    path: str
    hook: str
    allowed: bool
    actions: dict[str, ActionResult]
    verdict: Verdict | None = None
    provenance: tuple[Provenance, ...] = ()
    cached: bool = False
    conflict: str | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __bool__(self) -> bool:
        raise TypeError("a Decision has no truth value; read .allowed")

    @property
    def verified(self) -> bool:
        """True only when appraisal was required and passed (never for 'nothing applied')."""
        a = self.actions["appraise"]
        return a.required and a.outcome == Outcome.PASSED

    def to_dict(self) -> dict[str, Any]:
        """The ``imaguard check --json`` object (a contract: keep the keys)."""
        out: dict[str, Any] = {
            "path": self.path,
            "hook": self.hook,
            "allowed": self.allowed,
            "actions": {k: self.actions[k].to_dict() for k in ACTIONS},
            "verdict": self.verdict.to_dict() if self.verdict is not None else None,
            "provenance": [p.to_dict() for p in self.provenance],
            "cached": self.cached,
        }
        if self.conflict:
            out["conflict"] = self.conflict
        if self.detail:
            out["detail"] = self.detail
        return out
