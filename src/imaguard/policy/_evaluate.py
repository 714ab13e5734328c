"""Evaluation: which actions a policy demands for one request.

The kernel's ``ima_match_policy()`` and ``ima_match_rules()`` in
security/integrity/ima/ima_policy.c; see also docs/architecture.md.

Everything the kernel reads from the task and the inode is an explicit input here
(:class:`Subject`, :class:`Object`), so evaluation is pure. An attribute that is not
given (None) never satisfies a condition on it.

:func:`evaluate_naive` is the reference: the kernel's ``ima_match_policy`` walk, rule
by rule, first match per action kind. :mod:`imaguard.policy._compiled` gives the same
answers faster; a property test holds them equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imaguard.errors import PolicyError
from imaguard.policy._ast import DATA_HOOKS, MASKS, Action, IdCondition, Rule

__all__ = [
    "DEFAULT_PCR",
    "Object",
    "PolicyDecision",
    "Request",
    "Subject",
    "decide",
    "evaluate_naive",
    "match_rule",
    "parse_mask",
    "requested_kinds",
]

DEFAULT_PCR = 10


def parse_mask(text: str | int | None) -> int:
    """``MAY_READ|MAY_WRITE`` (names joined by '|') or an int -> the mask bits."""
    if text is None:
        return 0
    if isinstance(text, int):
        return text
    bits = 0
    for part in text.split("|"):
        name = part.strip()
        if name not in MASKS:
            raise PolicyError(f"unknown mask {name!r} (MAY_EXEC, MAY_WRITE, MAY_READ, MAY_APPEND)")
        bits |= MASKS[name]
    return bits


@dataclass(frozen=True)
class Subject:
    """The task: credentials, capabilities and LSM labels.

    ``euid`` defaults to ``uid`` and ``suid`` to ``euid`` (likewise for groups): a task
    that did not change identity.
    """

    uid: int | None = None
    euid: int | None = None
    suid: int | None = None
    gid: int | None = None
    egid: int | None = None
    sgid: int | None = None
    cap_setuid: bool = False
    cap_setgid: bool = False
    user: str | None = None
    role: str | None = None
    type: str | None = None

    def __post_init__(self) -> None:
        if self.euid is None:
            object.__setattr__(self, "euid", self.uid)
        if self.suid is None:
            object.__setattr__(self, "suid", self.euid)
        if self.egid is None:
            object.__setattr__(self, "egid", self.gid)
        if self.sgid is None:
            object.__setattr__(self, "sgid", self.egid)


@dataclass(frozen=True)
class Object:
    """The file (or buffer) being decided on."""

    fowner: int | None = None
    fgroup: int | None = None
    fsmagic: int | None = None
    fsname: str | None = None
    fs_subtype: str | None = None
    fsuuid: str | None = None
    user: str | None = None
    role: str | None = None
    type: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class Request:
    """One decision: the hook, the access mask, who and what; ``data`` names the keyring
    (KEY_CHECK) or the label (CRITICAL_DATA)."""

    func: str
    mask: int = 0
    subject: Subject = field(default_factory=Subject)
    object: Object = field(default_factory=Object)
    data: str | None = None


def _id_matches(
    cond: IdCondition, real: int | None, effective: int | None, saved: int | None, cap: bool
) -> bool:
    """uid=/gid= test the real id; euid=/egid= the effective one, or with CAP_SETUID/SETGID
    any of effective, saved and real (ima_match_rules). An unknown id never matches."""
    if not cond.effective:
        return real is not None and cond.holds(real)
    if cap:
        return any(v is not None and cond.holds(v) for v in (effective, saved, real))
    return effective is not None and cond.holds(effective)


def match_rule(rule: Rule, req: Request) -> bool:
    """``ima_match_rules``: does ``rule`` apply to ``req`` (its conditions, in kernel order)."""
    func = req.func
    post_setattr = func == "POST_SETATTR"
    if rule.func is not None and rule.func != func and not post_setattr:
        return False
    subj = req.subject
    if func in DATA_HOOKS:
        if rule.func != func:
            return False
        uid = rule.uid
        if uid is not None and not uid.effective and (subj.uid is None or not uid.holds(subj.uid)):
            return False
        items = rule.keyrings if func == "KEY_CHECK" else rule.labels
        if items is None:
            return True
        return req.data is not None and req.data in items
    if rule.mask is not None and not post_setattr:
        if rule.inmask:
            if not rule.mask & req.mask:
                return False
        elif rule.mask != req.mask:
            return False
    obj = req.object
    if rule.fsmagic is not None and rule.fsmagic != obj.fsmagic:
        return False
    if rule.fs_subtype is not None and rule.fs_subtype != obj.fs_subtype:
        return False  # a filesystem without a subtype never matches (ima_match_rules)
    if rule.fsname is not None and rule.fsname != obj.fsname:
        return False
    if rule.fsuuid is not None and (obj.fsuuid is None or str(rule.fsuuid) != obj.fsuuid.lower()):
        return False
    if rule.uid is not None and not _id_matches(
        rule.uid, subj.uid, subj.euid, subj.suid, subj.cap_setuid
    ):
        return False
    if rule.gid is not None and not _id_matches(
        rule.gid, subj.gid, subj.egid, subj.sgid, subj.cap_setgid
    ):
        return False
    if rule.fowner is not None and (obj.fowner is None or not rule.fowner.holds(obj.fowner)):
        return False
    if rule.fgroup is not None and (obj.fgroup is None or not rule.fgroup.holds(obj.fgroup)):
        return False
    for name, value in rule.lsm:
        holder, attr = name.split("_", 1)
        actual = getattr(obj if holder == "obj" else subj, attr)
        if actual != value:
            return False
    if rule.path is not None and obj.path != rule.path:
        return False
    return rule.path_prefix is None or (
        obj.path is not None and obj.path.startswith(rule.path_prefix)
    )


@dataclass(frozen=True)
class PolicyDecision:
    """What one policy demands for one request, and which rule decided each kind.

    ``decided`` maps an action kind to the rule that decided it (a ``dont_`` rule
    included); ``flags`` are the kernel's non-action flags gathered from every
    matching rule.
    """

    measure: bool = False
    appraise: bool = False
    audit: bool = False
    hash: bool = False
    digsig_required: bool = False
    modsig_allowed: bool = False
    check_blacklist: bool = False
    verity_required: bool = False
    permit_directio: bool = False
    cache: bool = True
    appraise_algos: tuple[str, ...] | None = None
    pcr: int = DEFAULT_PCR
    template: str | None = None
    decided: tuple[tuple[str, Rule], ...] = ()

    digestlist_allowed: bool = False

    @property
    def appraise_type(self) -> str | None:
        if not self.digsig_required:
            return None
        if self.verity_required:
            return "sigv3"
        if self.digestlist_allowed:
            return "digestlist"
        return "imasig|modsig" if self.modsig_allowed else "imasig"

    @property
    def digest_type(self) -> str | None:
        return "verity" if self.verity_required else None

    def rule_for(self, kind: str) -> Rule | None:
        for k, rule in self.decided:
            if k == kind:
                return rule
        return None

    @property
    def any_action(self) -> bool:
        return self.measure or self.appraise or self.audit or self.hash


def requested_kinds(
    rules: tuple[Rule, ...] | list[Rule], appraise_enabled: bool = True
) -> frozenset[str]:
    """``ima_policy_flag``: the positive kinds present (SETXATTR_CHECK rules do not count)."""
    kinds = {r.action.kind for r in rules if r.action.positive and r.func != "SETXATTR_CHECK"}
    if not appraise_enabled:
        kinds.discard("appraise")
    return frozenset(kinds)


def decide(matched: list[Rule]) -> PolicyDecision:
    """Fold the rules that decided, in list order, into a decision (ima_match_policy's body)."""
    measure = appraise = audit = hashing = False
    digsig = modsig = blacklist = verity = directio = digestlist = False
    cache = True
    algos: tuple[str, ...] | None = None
    pcr = DEFAULT_PCR
    template: str | None = None
    decided: list[tuple[str, Rule]] = []
    for rule in matched:
        digsig |= rule.digsig_required
        modsig |= rule.modsig_allowed
        digestlist |= rule.digestlist_allowed
        blacklist |= rule.check_blacklist
        verity |= rule.verity_required
        directio |= rule.permit_directio
        cache &= rule.cache
        act = rule.action
        if act is Action.MEASURE:
            measure = True
        elif act is Action.APPRAISE:
            appraise = True
            hashing = False  # appraise supersedes an earlier hash
            if rule.appraise_algos is not None:
                algos = rule.appraise_algos
        elif act is Action.AUDIT:
            audit = True
        elif act is Action.HASH:
            hashing = True
        if rule.pcr is not None:
            pcr = rule.pcr
        if rule.template is not None:
            template = rule.template
        decided.append((act.kind, rule))
    return PolicyDecision(
        measure,
        appraise,
        audit,
        hashing,
        digsig,
        modsig,
        blacklist,
        verity,
        directio,
        cache,
        algos,
        pcr,
        template,
        tuple(decided),
        digestlist_allowed=digestlist,
    )


def evaluate_naive(
    rules: tuple[Rule, ...] | list[Rule], req: Request, kinds: frozenset[str] | None = None
) -> PolicyDecision:
    """The kernel's walk, literally: every rule in order until every requested kind is decided."""
    open_kinds = set(requested_kinds(rules) if kinds is None else kinds)
    matched: list[Rule] = []
    for rule in rules:
        if not open_kinds:
            break
        kind = rule.action.kind
        if kind not in open_kinds:
            continue
        if not match_rule(rule, req):
            continue
        matched.append(rule)
        open_kinds.discard(kind)
    return decide(matched)
