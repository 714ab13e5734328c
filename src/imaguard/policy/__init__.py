"""The policy engine: the kernel's IMA policy language and semantics, and policy sets.

See docs/architecture.md ("Many policies side by side") for the multi-policy semantics.
"""

from imaguard.policy._ast import ACTION_KINDS, Action, IdCondition, Rule
from imaguard.policy._builtin import BUILTIN_NAMES, Builtin, builtin_policy
from imaguard.policy._compiled import CompiledPolicy
from imaguard.policy._evaluate import (
    Object,
    PolicyDecision,
    Request,
    Subject,
    evaluate_naive,
    match_rule,
    parse_mask,
)
from imaguard.policy._hooks import hook_name
from imaguard.policy._parser import Mode, Policy, parse_policy, parse_rule
from imaguard.policy._policyset import (
    Conflict,
    Lock,
    MeasureTarget,
    PolicySet,
    Provenance,
    SetDecision,
)

__all__ = [
    "ACTION_KINDS",
    "BUILTIN_NAMES",
    "Action",
    "Builtin",
    "CompiledPolicy",
    "Conflict",
    "IdCondition",
    "Lock",
    "MeasureTarget",
    "Mode",
    "Object",
    "Policy",
    "PolicyDecision",
    "PolicySet",
    "Provenance",
    "Request",
    "Rule",
    "SetDecision",
    "Subject",
    "builtin_policy",
    "evaluate_naive",
    "hook_name",
    "match_rule",
    "parse_mask",
    "parse_policy",
    "parse_rule",
]
