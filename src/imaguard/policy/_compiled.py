"""Compiled policies: a decision touches only the rules that can match it.

Three steps turn a rule list into something fast while keeping the kernel's answer:

1. **By hook.** A request for hook H can only match rules with ``func=H`` and rules
   with no ``func=`` (data hooks such as KEY_CHECK match only their own rules;
   POST_SETATTR matches every rule), kept in list order. Rules for other hooks are never
   looked at, so a decision does not slow down as other hooks gain rules.
2. **By action kind.** The kinds are decided independently (first match per kind), so
   each hook's list is split into one list per kind; the decision is the first match in
   each, folded together in list order exactly as the kernel folds them.
3. **By an inverted index.** Each rule is filed under one equality condition it has
   (path, fsuuid, fsmagic, fowner, uid, fgroup, gid, fsname, exact mask, or keyring/label
   for data hooks), or in a wildcard list. A request gathers the wildcard list and the
   one bucket per attribute that carries its own value; only those rules are checked,
   in list order.

Each rule's conditions become one generated Python function (a single expression over
the request's fields), and folded decisions are memoised per set of deciding rules.
Generated code only
embeds ``repr()`` of parsed integers and strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imaguard.policy._ast import ACTION_KINDS, DATA_HOOKS, Rule
from imaguard.policy._evaluate import PolicyDecision, Request, decide, requested_kinds

__all__ = ["CompiledPolicy"]

LEAF_SIZE = 8
"""Lists of at most this many rules are scanned in order without an index."""
MEMO_SIZE = 4096
"""Distinct decisions remembered per hook (the fold of the same rules is the same)."""

_ENV_FIELDS = (
    "mask",
    "uid",
    "euid",
    "suid",
    "gid",
    "egid",
    "sgid",
    "capu",
    "capg",
    "suser",
    "srole",
    "stype",
    "fowner",
    "fgroup",
    "fsmagic",
    "fsname",
    "fs_subtype",
    "fsuuid",
    "ouser",
    "orole",
    "otype",
    "path",
    "data",
)


class _Env:
    """The request flattened once, so generated code reads plain attributes."""

    __slots__ = _ENV_FIELDS

    def __init__(self, req: Request) -> None:
        s, o = req.subject, req.object
        self.mask = req.mask
        self.uid, self.euid, self.suid = s.uid, s.euid, s.suid
        self.gid, self.egid, self.sgid = s.gid, s.egid, s.sgid
        self.capu, self.capg = s.cap_setuid, s.cap_setgid
        self.suser, self.srole, self.stype = s.user, s.role, s.type
        self.fowner, self.fgroup = o.fowner, o.fgroup
        self.fsmagic, self.fsname = o.fsmagic, o.fsname
        self.fs_subtype = o.fs_subtype
        self.fsuuid = o.fsuuid.lower() if o.fsuuid is not None else None
        self.ouser, self.orole, self.otype = o.user, o.role, o.type
        self.path = o.path
        self.data = req.data


_OPS = {"=": "==", "<": "<", ">": ">"}
_LSM_ENV = {
    "obj_user": "ouser",
    "obj_role": "orole",
    "obj_type": "otype",
    "subj_user": "suser",
    "subj_role": "srole",
    "subj_type": "stype",
}


def _cmp(var: str, op: str, value: int) -> str:
    if op == "=":
        return f"{var} == {value}"
    return f"({var} is not None and {var} {_OPS[op]} {value})"


def _conditions(rule: Rule, hook_class: str) -> list[str]:
    """Python expressions over the env variables, all of which must hold (ima_match_rules)."""
    conds: list[str] = []
    if hook_class == "data":
        if rule.uid is not None and not rule.uid.effective:
            conds.append(_cmp("uid", rule.uid.op, rule.uid.value))
        items = rule.keyrings if rule.func == "KEY_CHECK" else rule.labels
        if items is not None:
            conds.append(f"data in {items!r}")
        return conds
    if rule.mask is not None and hook_class != "post_setattr":
        conds.append(f"(mask & {rule.mask})" if rule.inmask else f"mask == {rule.mask}")
    if rule.fsmagic is not None:
        conds.append(f"fsmagic == {rule.fsmagic}")
    if rule.fsname is not None:
        conds.append(f"fsname == {rule.fsname!r}")
    if rule.fs_subtype is not None:
        conds.append(f"fs_subtype == {rule.fs_subtype!r}")
    if rule.fsuuid is not None:
        conds.append(f"fsuuid == {str(rule.fsuuid)!r}")
    for base, cond, cap in (("uid", rule.uid, "capu"), ("gid", rule.gid, "capg")):
        if cond is None:
            continue
        if not cond.effective:
            conds.append(_cmp(base, cond.op, cond.value))
        else:
            e, sv = f"e{base}", f"s{base}"
            any_of = " or ".join(_cmp(v, cond.op, cond.value) for v in (e, sv, base))
            conds.append(
                f"(({cap} and ({any_of})) or (not {cap} and {_cmp(e, cond.op, cond.value)}))"
            )
    for name, cond in (("fowner", rule.fowner), ("fgroup", rule.fgroup)):
        if cond is not None:
            conds.append(_cmp(name, cond.op, cond.value))
    for name, value in rule.lsm:
        conds.append(f"{_LSM_ENV[name]} == {value!r}")
    if rule.path is not None:
        conds.append(f"path == {rule.path!r}")
    if rule.path_prefix is not None:
        conds.append(f"(path is not None and path.startswith({rule.path_prefix!r}))")
    return conds


Predicate = Callable[[_Env], bool]


def _predicates(rules: Sequence[Rule], hook_class: str) -> list[Predicate]:
    """One generated function per rule, compiled together: ``r<i>(env) -> bool``."""
    lines: list[str] = []
    for i, rule in enumerate(rules):
        conds = _conditions(rule, hook_class)
        used = [f for f in _ENV_FIELDS if any(f in c for c in conds)]
        lines.append(f"def r{i}(e):")
        lines.extend(f"    {name} = e.{name}" for name in used)
        lines.append(f"    return bool({' and '.join(conds) if conds else 'True'})")
    namespace: dict[str, Any] = {}
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<imaguard-policy>", "exec"), namespace)  # noqa: S102 - see module doc
    return [namespace[f"r{i}"] for i in range(len(rules))]


_WILD = object()

# Equality conditions used to index rules, most selective first.
_ATTRS_FILE = ("path", "fsuuid", "fsmagic", "fowner", "uid", "fgroup", "gid", "fsname", "mask")


def _key(rule: Rule, attr: str, hook_class: str) -> Any:
    """The rule's equality value for ``attr``, or _WILD when any value may match."""
    if attr == "mask":
        if rule.mask is None or rule.inmask or hook_class == "post_setattr":
            return _WILD
        return rule.mask
    if attr in ("uid", "gid", "fowner", "fgroup"):
        cond = getattr(rule, attr)
        if cond is None or cond.op != "=" or cond.effective:
            return _WILD
        return cond.value
    if attr == "fsuuid":
        return _WILD if rule.fsuuid is None else str(rule.fsuuid)
    value = getattr(rule, attr)
    return _WILD if value is None else value


class _Finder:
    """First matching rule of one action kind, through an inverted index.

    Each rule is filed once, under one equality condition it has (``attr == value``), or
    in the wildcard list when it has none. A request can only match rules filed under
    its own values, so the candidates are the wildcard list plus one bucket per indexed
    attribute; they are checked in list order and the first that holds wins.
    """

    __slots__ = ("index", "preds", "wild")

    def __init__(
        self, entries: list[tuple[int, Rule]], hook_class: str, preds: dict[int, Predicate]
    ) -> None:
        self.preds = preds
        self.wild: list[int] = []
        self.index: list[tuple[str, dict[Any, list[int]]]] = []
        if len(entries) <= LEAF_SIZE:
            self.wild = [i for i, _ in entries]
            return
        tables: dict[str, dict[Any, list[int]]] = {}
        for i, rule in entries:
            filed = False
            if hook_class == "data":
                items = rule.keyrings if rule.func == "KEY_CHECK" else rule.labels
                if items is not None:
                    table = tables.setdefault("data", {})
                    for item in items:
                        table.setdefault(item, []).append(i)
                    filed = True
            else:
                for attr in _ATTRS_FILE:
                    key = _key(rule, attr, hook_class)
                    if key is not _WILD:
                        tables.setdefault(attr, {}).setdefault(key, []).append(i)
                        filed = True
                        break
            if not filed:
                self.wild.append(i)
        self.index = list(tables.items())

    def find(self, env: _Env) -> int:
        cands = self.wild
        merged = False
        for attr, table in self.index:
            bucket = table.get(getattr(env, attr))
            if bucket:
                cands = [*cands, *bucket]
                merged = True
        if merged:
            cands.sort()
        preds = self.preds
        for i in cands:
            if preds[i](env):
                return i
        return -1


@dataclass
class _HookPlan:
    finders: tuple[_Finder, ...]
    rules: tuple[Rule, ...]
    memo: dict[tuple[int, ...], PolicyDecision]

    def evaluate(self, env: _Env) -> PolicyDecision:
        hits = tuple(sorted(i for f in self.finders if (i := f.find(env)) >= 0))
        decision = self.memo.get(hits)
        if decision is None:
            decision = decide([self.rules[i] for i in hits])
            if len(self.memo) < MEMO_SIZE:
                self.memo[hits] = decision
        return decision


class CompiledPolicy:
    """A rule list compiled for fast evaluation; same answers as :func:`evaluate_naive`."""

    def __init__(self, rules: Sequence[Rule], *, appraise_enabled: bool = True) -> None:
        self.rules = tuple(rules)
        self.kinds = requested_kinds(self.rules, appraise_enabled)
        self._plans: dict[str, _HookPlan] = {}

    def _plan(self, func: str) -> _HookPlan:
        if func in DATA_HOOKS:
            hook_class = "data"
            candidates = [(i, r) for i, r in enumerate(self.rules) if r.func == func]
        elif func == "POST_SETATTR":
            hook_class = "post_setattr"
            candidates = list(enumerate(self.rules))
        else:
            hook_class = "file"
            candidates = [(i, r) for i, r in enumerate(self.rules) if r.func in (None, func)]
        finders = []
        preds_list = _predicates([r for _, r in candidates], hook_class)
        preds = {i: preds_list[n] for n, (i, _) in enumerate(candidates)}
        for kind in ACTION_KINDS:
            if kind not in self.kinds:
                continue
            of_kind = [(i, r) for i, r in candidates if r.action.kind == kind]
            if of_kind:
                finders.append(_Finder(of_kind, hook_class, preds))
        plan = _HookPlan(tuple(finders), self.rules, {})
        self._plans[func] = plan
        return plan

    def evaluate(self, req: Request) -> PolicyDecision:
        plan = self._plans.get(req.func)
        if plan is None:
            plan = self._plan(req.func)
        return plan.evaluate(_Env(req))

    def rules_for(self, func: str) -> int:
        """How many rules a decision for ``func`` can look at (for the benchmarks)."""
        if func in DATA_HOOKS:
            return sum(1 for r in self.rules if r.func == func)
        return sum(1 for r in self.rules if r.func in (None, func))
