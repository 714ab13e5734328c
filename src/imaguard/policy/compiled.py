"""Compiled policies: a decision touches only the rules that can match it.

Three steps turn a rule list into something fast while keeping the kernel's answer:

1. **By hook.** A request for hook H can only match rules with ``func=H`` and rules
   with no ``func=`` (data hooks such as KEY_CHECK match only their own rules;
   POST_SETATTR matches every rule), kept in list order. Rules for other hooks are never
   looked at, so a decision does not slow down as other hooks gain rules.
2. **By action kind.** The kinds are decided independently (first match per kind), so
   each hook's list is split into one list per kind; the decision is the first match in
   each, folded together in list order exactly as the kernel folds them.
3. **By a discriminating condition.** A long list is split on the equality condition
   that best separates it (fsmagic, fsname, fsuuid, uid, gid, fowner, fgroup, path,
   exact mask, keyring/label): one bucket per value holding the rules with that value and
   the rules without the condition, in order. A lookup picks one bucket.

Each final list becomes one generated Python function, an ``if`` per rule testing only
that rule's conditions, returning the index of the first match. Generated code only
embeds ``repr()`` of parsed integers and strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imaguard.policy.ast import ACTION_KINDS, DATA_HOOKS, Rule
from imaguard.policy.evaluate import PolicyDecision, Request, decide, requested_kinds

__all__ = ["CompiledPolicy"]

LEAF_SIZE = 12
MAX_DEPTH = 3
MAX_BUCKET_CELLS = 4_000_000

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


Scan = Callable[[_Env], int]


def _generate(entries: Sequence[tuple[int, Rule]], hook_class: str) -> Scan:
    if not entries:
        return lambda _e: -1
    body: list[str] = []
    used: set[str] = set()
    for index, rule in entries:
        conds = _conditions(rule, hook_class)
        if not conds:
            body.append(f"    return {index}")
            break
        for field_name in _ENV_FIELDS:
            if any(field_name in c for c in conds):
                used.add(field_name)
        body.append(f"    if {' and '.join(conds)}:\n        return {index}")
    else:
        body.append("    return -1")
    loads = [f"    {name} = e.{name}" for name in _ENV_FIELDS if name in used]
    source = "def _scan(e):\n" + "\n".join(loads + body) + "\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<imaguard-policy>", "exec"), namespace)  # noqa: S102 - see module doc
    scan: Scan = namespace["_scan"]
    return scan


_WILD = object()


def _key(rule: Rule, attr: str, hook_class: str) -> Any:
    """The rule's equality value for ``attr``, or _WILD when any value may match."""
    if attr == "data":
        items = rule.keyrings if rule.func == "KEY_CHECK" else rule.labels
        return _WILD if items is None else items
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


_ATTRS_FILE = ("fsmagic", "path", "fowner", "uid", "fsname", "fsuuid", "fgroup", "gid", "mask")
_ATTRS_DATA = ("data",)


class _Leaf:
    __slots__ = ("scan",)

    def __init__(self, scan: Scan) -> None:
        self.scan = scan

    def find(self, env: _Env) -> int:
        return self.scan(env)


class _Split:
    __slots__ = ("attr", "default", "table")

    def __init__(
        self, attr: str, table: dict[Any, _Leaf | _Split], default: _Leaf | _Split
    ) -> None:
        self.attr = attr
        self.table = table
        self.default = default

    def find(self, env: _Env) -> int:
        return self.table.get(getattr(env, self.attr), self.default).find(env)


def _build(
    entries: list[tuple[int, Rule]], hook_class: str, attrs: tuple[str, ...], depth: int
) -> _Leaf | _Split:
    if len(entries) <= LEAF_SIZE or depth >= MAX_DEPTH or not attrs:
        return _Leaf(_generate(entries, hook_class))
    best: tuple[int, str] | None = None
    for attr in attrs:
        wild = sum(1 for _, r in entries if _key(r, attr, hook_class) is _WILD)
        if wild * 2 <= len(entries) and (best is None or wild < best[0]):
            best = (wild, attr)
    if best is None:
        return _Leaf(_generate(entries, hook_class))
    attr = best[1]
    wild_entries = [(i, r) for i, r in entries if _key(r, attr, hook_class) is _WILD]
    specific: dict[Any, list[tuple[int, Rule]]] = {}
    for i, r in entries:
        key = _key(r, attr, hook_class)
        if key is _WILD:
            continue
        for value in key if attr == "data" else (key,):
            specific.setdefault(value, []).append((i, r))
    if len(specific) * max(len(wild_entries), 1) > MAX_BUCKET_CELLS:
        return _Leaf(_generate(entries, hook_class))
    rest = tuple(a for a in attrs if a != attr)
    table: dict[Any, _Leaf | _Split] = {}
    for value, spec in specific.items():
        merged = sorted(spec + wild_entries, key=lambda e: e[0])
        table[value] = _build(merged, hook_class, rest, depth + 1)
    default = _build(wild_entries, hook_class, rest, depth + 1)
    return _Split(attr, table, default)


@dataclass(frozen=True)
class _HookPlan:
    finders: tuple[_Leaf | _Split, ...]
    rules: tuple[Rule, ...]

    def evaluate(self, env: _Env) -> PolicyDecision:
        hits = [i for f in self.finders if (i := f.find(env)) >= 0]
        if not hits:
            return decide([])
        hits.sort()
        return decide([self.rules[i] for i in hits])


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
        attrs = _ATTRS_DATA if hook_class == "data" else _ATTRS_FILE
        finders = []
        for kind in ACTION_KINDS:
            if kind not in self.kinds:
                continue
            of_kind = [(i, r) for i, r in candidates if r.action.kind == kind]
            if of_kind:
                finders.append(_build(of_kind, hook_class, attrs, 0))
        plan = _HookPlan(tuple(finders), self.rules)
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
