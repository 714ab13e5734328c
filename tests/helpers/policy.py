"""Local helpers for the policy-engine tests: request builders, a double-checked evaluator,
and Hypothesis strategies over the kernel's policy grammar (ima_policy.c ima_parse_rule).

The strategies build a rule two ways at once: the :class:`Rule` value the parser must
produce, and a policy line that spells it (tokens in a random order, with the spelling
variants the kernel accepts). Only *valid* rules are generated: every combination obeys
the option order of ``ima_parse_rule`` and the limits of ``ima_validate_rule`` (ima_policy.c).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from imaguard.formats.hashalgo import by_name
from imaguard.formats.template import TEMPLATES
from imaguard.policy import (
    Action,
    CompiledPolicy,
    IdCondition,
    Object,
    PolicyDecision,
    Request,
    Rule,
    Subject,
    builtin_policy,
    evaluate_naive,
    parse_mask,
    parse_policy,
)
from imaguard.policy._ast import LSM_FIELDS, MASKS

KINDS = ("measure", "appraise", "audit", "hash")

_SUBJECT_KEYS = {
    "uid": "uid",
    "euid": "euid",
    "suid": "suid",
    "gid": "gid",
    "egid": "egid",
    "sgid": "sgid",
    "cap_setuid": "cap_setuid",
    "cap_setgid": "cap_setgid",
    "subj_user": "user",
    "subj_role": "role",
    "subj_type": "type",
}
_OBJECT_KEYS = {
    "fowner": "fowner",
    "fgroup": "fgroup",
    "fsmagic": "fsmagic",
    "fsname": "fsname",
    "fsuuid": "fsuuid",
    "obj_user": "user",
    "obj_role": "role",
    "obj_type": "type",
    "path": "path",
}


def req(func: str, mask: str | int | None = None, *, data: str | None = None, **kw: Any) -> Request:
    """A request: ``req("FILE_CHECK", "MAY_READ|MAY_WRITE", uid=0, fsmagic=0x9fa0)``."""
    subject = {_SUBJECT_KEYS[k]: v for k, v in kw.items() if k in _SUBJECT_KEYS}
    obj = {_OBJECT_KEYS[k]: v for k, v in kw.items() if k in _OBJECT_KEYS}
    unknown = set(kw) - set(_SUBJECT_KEYS) - set(_OBJECT_KEYS)
    assert not unknown, f"unknown request fields {unknown}"
    return Request(func, parse_mask(mask), Subject(**subject), Object(**obj), data)


def rules_of(policy: str, mode: str = "kernel") -> tuple[Rule, ...]:
    """Rules from policy text, or from ``builtin:NAMES`` (the kernel's ima_policy= list)."""
    if policy.startswith("builtin:"):
        return builtin_policy(policy.removeprefix("builtin:")).policy.rules
    return parse_policy(policy, mode=mode).rules  # type: ignore[arg-type]


def decide_both(rules: tuple[Rule, ...] | list[Rule], request: Request) -> PolicyDecision:
    """The naive walk's decision, after checking the compiled index gives the same one."""
    naive = evaluate_naive(rules, request)
    compiled = CompiledPolicy(rules).evaluate(request)
    assert compiled == naive, f"compiled {compiled} != naive {naive}"
    return naive


def acts(decision: Any) -> set[str]:
    """The action kinds a decision demands."""
    return {k for k in KINDS if getattr(decision, k)}


# --------------------------------------------------------------------------------------
# Hypothesis: valid rules over the grammar
# --------------------------------------------------------------------------------------

FILE_FUNCS = (
    "FILE_CHECK",
    "MMAP_CHECK",
    "MMAP_CHECK_REQPROT",
    "BPRM_CHECK",
    "CREDS_CHECK",
    "FIRMWARE_CHECK",
    "POLICY_CHECK",
)
READ_FUNCS = ("MODULE_CHECK", "KEXEC_KERNEL_CHECK", "KEXEC_INITRAMFS_CHECK")
APP_FUNCS = ("PLUGIN_CHECK", "CONFIG_CHECK", "X9")
ALIASES = {"FILE_CHECK": "PATH_CHECK", "MMAP_CHECK": "FILE_MMAP"}
ALGO_NAMES = [
    "md4",
    "md5",
    "sha1",
    "rmd160",
    "sha256",
    "sha384",
    "sha512",
    "sha224",
    "rmd128",
    "rmd256",
    "rmd320",
    "wp256",
    "wp384",
    "wp512",
    "tgr128",
    "tgr160",
    "tgr192",
    "sm3",
    "streebog256",
    "streebog512",
    "sha3-256",
    "sha3-384",
    "sha3-512",
]

_WORD = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/äé",
    min_size=1,
    max_size=12,
)


@dataclass(frozen=True)
class Domain:
    """Value domains for generated conditions; small domains make rules and requests meet."""

    words: st.SearchStrategy[str]
    ids: st.SearchStrategy[int]
    magics: st.SearchStrategy[int]
    uuids: st.SearchStrategy[uuid.UUID]
    paths: st.SearchStrategy[str]


WIDE = Domain(
    words=_WORD,
    ids=st.integers(0, 0xFFFFFFFE),
    magics=st.integers(0, (1 << 64) - 1),
    uuids=st.uuids(),
    paths=_WORD.map(lambda w: "/" + w),
)
SMALL_UUIDS = tuple(uuid.UUID(int=i * 0x1111_1111_1111_1111) for i in range(1, 4))
NARROW = Domain(
    words=st.sampled_from(("ext4", "tmpfs", "x", "y")),
    ids=st.sampled_from((0, 1, 2, 1000, 1001)),
    magics=st.sampled_from((0x9FA0, 0x01021994, 0xEF53, 0)),
    uuids=st.sampled_from(SMALL_UUIDS),
    paths=st.sampled_from(("/usr", "/usr/bin/ls", "/etc/", "/etc/passwd", "/")),
)


def _group(func: str | None) -> str:
    if func is None or func in FILE_FUNCS:
        return "file"
    if func in READ_FUNCS:
        return "read"
    if func in APP_FUNCS:
        return "app"
    return func


_GROUP_ACTIONS = {
    "KEXEC_CMDLINE": (Action.MEASURE, Action.DONT_MEASURE),
    "KEY_CHECK": (Action.MEASURE, Action.DONT_MEASURE),
    "CRITICAL_DATA": (Action.MEASURE, Action.DONT_MEASURE),
    "SETXATTR_CHECK": (Action.APPRAISE,),
}


def _hex_spelling(draw: Callable[..., Any], value: int) -> str:
    text = f"{value:x}"
    if draw(st.booleans()):
        text = text.upper()
    return ("0x" if draw(st.booleans()) else "") + text


def _num_spelling(draw: Callable[..., Any], value: int) -> str:
    return ("+" if draw(st.integers(0, 7)) == 0 else "") + str(value)


@st.composite
def rule_and_line(
    draw: Callable[..., Any],
    mode: str = "kernel",
    domain: Domain = WIDE,
    funcs: tuple[str | None, ...] | None = None,
    dense: frozenset[str] = frozenset(),
    rate: int = 3,
) -> tuple[Rule, str]:
    """A valid rule and one policy line that must parse to exactly that rule.

    ``dense`` names conditions that should appear in most rules (so a compiled policy
    indexes them); others appear with probability ``rate``/10.
    """

    def maybe(name: str) -> bool:
        return bool(draw(st.integers(0, 9)) < (8 if name in dense else rate))

    if funcs is None:
        funcs = (
            None,
            *FILE_FUNCS,
            *READ_FUNCS,
            "KEXEC_CMDLINE",
            "KEY_CHECK",
            "CRITICAL_DATA",
            "SETXATTR_CHECK",
        )
        if mode == "imaguard":
            funcs = (*funcs, *APP_FUNCS)
    func = draw(st.sampled_from(funcs))
    group = _group(func)
    action = draw(st.sampled_from(_GROUP_ACTIONS.get(group, tuple(Action))))
    fields: dict[str, Any] = {}
    tokens: list[str] = [action.value]
    if func is not None:
        spelled = ALIASES[func] if func in ALIASES and draw(st.booleans()) else func
        tokens.append(f"func={spelled}")
        fields["func"] = func
    filelike = group in ("file", "read", "app")
    if filelike and maybe("mask"):
        name = draw(st.sampled_from(tuple(MASKS)))
        inmask = draw(st.integers(0, 3 if "mask" in dense else 1)) == 0
        tokens.append(f"mask={'^' if inmask else ''}{name}")
        fields["mask"], fields["inmask"] = MASKS[name], inmask
    if (filelike or group == "KEXEC_CMDLINE") and group != "SETXATTR_CHECK":
        if maybe("fsmagic"):
            magic = draw(domain.magics)
            tokens.append("fsmagic=" + _hex_spelling(draw, magic))
            fields["fsmagic"] = magic
        if maybe("fsname"):
            names = draw(st.lists(domain.words, min_size=1, max_size=2))
            tokens += [f"fsname={n}" for n in names]  # the last one wins (set below)
        if maybe("fsuuid"):
            u = draw(domain.uuids)
            text = str(u).upper() if draw(st.booleans()) else str(u)
            tokens.append(f"fsuuid={text}")
            fields["fsuuid"] = u
        for slot in ("fowner", "fgroup"):
            if maybe(slot):
                op = draw(st.sampled_from("===<>" if slot in dense else "=<>"))
                value = draw(domain.ids)
                tokens.append(f"{slot}{op}{_num_spelling(draw, value)}")
                fields[slot] = IdCondition(op, value)
    if group != "SETXATTR_CHECK":
        data = group in ("KEY_CHECK", "CRITICAL_DATA")
        for slot in ("uid", "gid"):
            if maybe(slot):
                effective = not data and draw(st.integers(0, 3 if slot in dense else 1)) == 0
                op = draw(st.sampled_from("===<>" if slot in dense else "=<>"))
                value = draw(domain.ids)
                key = ("e" if effective else "") + slot
                tokens.append(f"{key}{op}{_num_spelling(draw, value)}")
                fields[slot] = IdCondition(op, value, effective)
    if filelike:
        lsm = []
        for name in LSM_FIELDS:
            if maybe("lsm"):
                value = draw(domain.words)
                tokens.append(f"{name}={value}")
                lsm.append((name, value))
        fields["lsm"] = tuple(lsm)
    if group == "KEY_CHECK" and maybe("data"):
        items = tuple(draw(st.lists(domain.words.filter(lambda w: "|" not in w), min_size=1)))
        tokens.append("keyrings=" + "|".join(items))
        fields["keyrings"] = items
    if group == "CRITICAL_DATA" and maybe("data"):
        items = tuple(draw(st.lists(domain.words.filter(lambda w: "|" not in w), min_size=1)))
        tokens.append("label=" + "|".join(items))
        fields["labels"] = items
    # -- options ---------------------------------------------------------------------
    measure = action is Action.MEASURE
    appraise = action is Action.APPRAISE
    if measure and draw(st.integers(0, 3)) == 0:
        pcr = draw(st.integers(0, 63))
        tokens.append("pcr=" + _num_spelling(draw, pcr))
        fields["pcr"] = pcr
    template_token = None
    if measure and draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(tuple(TEMPLATES)))
        template_token = f"template={'|'.join(TEMPLATES[name]) if draw(st.booleans()) else name}"
        fields["template"] = name
    verity_token = type_token = None
    if group in ("file", "app") and (measure or appraise) and draw(st.integers(0, 4)) == 0:
        verity_token = "digest_type=verity"
        fields["digest_type"] = "verity"
    if appraise and group != "SETXATTR_CHECK":
        if verity_token is not None:
            fields["appraise_type"] = "sigv3"
        elif draw(st.integers(0, 2)) == 0:
            choices = ["imasig"] + (["imasig|modsig"] if group in ("read", "app") else [])
            fields["appraise_type"] = draw(st.sampled_from(choices))
        if "appraise_type" in fields:
            type_token = f"appraise_type={fields['appraise_type']}"
    if appraise and (group == "SETXATTR_CHECK" or draw(st.integers(0, 2)) == 0):
        algos = draw(st.lists(st.sampled_from(ALGO_NAMES), min_size=1, max_size=4))
        tokens.append("appraise_algos=" + ",".join(algos))
        # The parser keeps the kernel's print order: ascending hash-algorithm id, no repeats.
        fields["appraise_algos"] = tuple(sorted(set(algos), key=lambda a: by_name(a).id))
    if filelike and maybe("permit_directio"):
        tokens += ["permit_directio"] * draw(st.integers(1, 2))
        fields["permit_directio"] = True
    if draw(st.integers(0, 9)) == 0:
        tokens.append("appraise_flag=check_blacklist")  # accepted and ignored (ima_parse_rule)
    if mode == "imaguard" and filelike:
        if maybe("path"):
            p = draw(domain.paths)
            key = draw(st.sampled_from(("path", "path", "path_prefix")))
            tokens.append(f"{key}={p}")
            fields[key] = p
        if draw(st.integers(0, 5)) == 0:
            tokens.append("cache=no")
            fields["cache"] = False
    every = [*tokens, template_token, verity_token, type_token]
    order = draw(st.permutations(range(len(every))))
    placed = [every[i] for i in order if every[i] is not None]
    # ima_parse_rule's order: template= after the action; digest_type before appraise_type.
    if template_token is not None and placed.index(template_token) < placed.index(action.value):
        placed.remove(template_token)
        placed.insert(placed.index(action.value) + 1, template_token)
    if verity_token is not None and type_token is not None:
        placed.remove(verity_token)
        placed.insert(placed.index(type_token), verity_token)
    fsnames = [tok.removeprefix("fsname=") for tok in placed if tok.startswith("fsname=")]
    if fsnames:
        fields["fsname"] = fsnames[-1]  # ima_parse_rule: no duplicate check, the later wins
    sep = draw(st.sampled_from((" ", "\t", "  ", " \t")))
    lead = draw(st.sampled_from(("", " ", "\t", " \t ")))
    tail = draw(st.sampled_from(("", " ", "\t", " # trailing comment", "\t#x")))
    return Rule(action=action, **fields), lead + sep.join(placed) + tail


def lines_to_policy(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


# Requests over the narrow domain, for the equivalence and policy-set properties.
_REQ_FUNCS = (
    *FILE_FUNCS,
    *READ_FUNCS,
    "KEXEC_CMDLINE",
    "KEY_CHECK",
    "CRITICAL_DATA",
    "SETXATTR_CHECK",
    "POST_SETATTR",
    "PLUGIN_CHECK",
    "CONFIG_CHECK",
)


def _opt(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), s, s, s)


@st.composite
def requests(draw: Callable[..., Any], domain: Domain = NARROW) -> Request:
    func = draw(st.sampled_from(_REQ_FUNCS))
    mask = draw(st.integers(0, 15))
    subject = Subject(
        uid=draw(_opt(domain.ids)),
        euid=draw(_opt(domain.ids)),
        suid=draw(_opt(domain.ids)),
        gid=draw(_opt(domain.ids)),
        egid=draw(_opt(domain.ids)),
        sgid=draw(_opt(domain.ids)),
        cap_setuid=draw(st.booleans()),
        cap_setgid=draw(st.booleans()),
        user=draw(_opt(domain.words)),
        role=draw(_opt(domain.words)),
        type=draw(_opt(domain.words)),
    )
    fsuuid = draw(_opt(domain.uuids))
    obj = Object(
        fowner=draw(_opt(domain.ids)),
        fgroup=draw(_opt(domain.ids)),
        fsmagic=draw(_opt(domain.magics)),
        fsname=draw(_opt(domain.words)),
        fsuuid=None
        if fsuuid is None
        else (str(fsuuid).upper() if draw(st.booleans()) else str(fsuuid)),
        user=draw(_opt(domain.words)),
        role=draw(_opt(domain.words)),
        type=draw(_opt(domain.words)),
        path=draw(_opt(domain.paths)),
    )
    data = draw(_opt(domain.words))
    return Request(func, mask, subject, obj, data)


def _satisfy(draw: Callable[..., Any], cond: IdCondition, domain: Domain) -> int:
    if cond.op == "=":
        return cond.value
    if cond.op == "<":
        return cond.value - 1 if cond.value > 0 else draw(domain.ids)
    return cond.value + 1


def _fields_for(draw: Callable[..., Any], rule: Rule, domain: Domain) -> dict[str, Any]:
    """Request fields that satisfy ``rule``'s file and subject conditions."""
    fields: dict[str, Any] = {}
    for name in ("fsmagic", "fsname", "path"):
        if getattr(rule, name) is not None:
            fields[name] = getattr(rule, name)
    if rule.fsuuid is not None:
        fields["fsuuid"] = str(rule.fsuuid)
    if rule.path_prefix is not None:
        fields["path"] = rule.path_prefix + draw(st.sampled_from(("", "x", "/y")))
    for slot in ("uid", "gid"):
        cond = getattr(rule, slot)
        if cond is None:
            continue
        satisfying = _satisfy(draw, cond, domain)
        if cond.effective:
            where = draw(st.sampled_from(("e", "s", "")))
            fields[where + slot] = satisfying
            if where != "e":
                fields["e" + slot] = draw(domain.ids)
                fields["cap_setuid" if slot == "uid" else "cap_setgid"] = draw(st.booleans())
        else:
            fields[slot] = satisfying
    for slot in ("fowner", "fgroup"):
        cond = getattr(rule, slot)
        if cond is not None:
            fields[slot] = _satisfy(draw, cond, domain)
    for name, value in rule.lsm:
        fields[name] = value
    return fields


_IDS = ("uid", "euid", "suid", "gid", "egid", "sgid", "fowner", "fgroup")


@st.composite
def request_near(draw: Callable[..., Any], rules: list[Rule], domain: Domain = NARROW) -> Request:
    """A request built to satisfy one to three of ``rules`` at once (then perturbed now and
    then), so that random policies and requests meet often enough for first-match order,
    flag folding and kind interplay to matter."""
    if not rules or draw(st.integers(0, 4)) == 0:
        plain: Request = draw(requests(domain))
        return plain
    chosen = draw(st.lists(st.sampled_from(rules), min_size=1, max_size=3))
    funcs = [r.func for r in chosen if r.func is not None]
    if funcs:
        func = funcs[0]
    else:
        func = draw(st.sampled_from((*FILE_FUNCS, *READ_FUNCS, "KEXEC_CMDLINE", *APP_FUNCS)))
    if draw(st.integers(0, 9)) == 0:
        func = "POST_SETATTR"
    mask = draw(st.integers(0, 15))
    masked = [r for r in chosen if r.mask is not None]
    if masked and masked[0].mask is not None:
        mask = (mask | masked[0].mask) if masked[0].inmask else masked[0].mask
    fields: dict[str, Any] = {}
    for rule in chosen:
        for key, value in _fields_for(draw, rule, domain).items():
            fields.setdefault(key, value)
    data = None
    for rule in chosen:
        items = rule.keyrings if rule.func == "KEY_CHECK" else rule.labels
        if items and data is None:
            data = draw(st.sampled_from(items))
    # perturb: drop or replace a few fields
    for name in list(fields):
        roll = draw(st.integers(0, 9))
        if roll == 0:
            del fields[name]
        elif roll == 1 and name in _IDS:
            fields[name] = draw(domain.ids)
    if draw(st.integers(0, 9)) == 0:
        data = draw(_opt(domain.words))
    if draw(st.integers(0, 9)) == 0:
        mask = draw(st.integers(0, 15))
    return req(func, mask, data=data, **fields)
