"""The IMA policy parser: the kernel's grammar and validation, plus marked imaguard extensions.

**Kernel mode** (the default) accepts exactly what the baseline kernel accepts
(``ima_parse_rule`` and ``ima_validate_rule`` in security/integrity/ima/ima_policy.c;
Documentation/ABI/testing/ima_policy) and rejects the
rest, assuming a kernel built with the usual options (asymmetric-key measurement,
modsig, LSM rules). **imaguard mode** adds, and only there:

* application-defined hooks: ``func=NAME`` for any upper-case name not in the kernel's
  list (``PLUGIN_CHECK``, ...); such hooks allow every file condition and option;
* ``path=/exact/path`` and ``path_prefix=/dir/`` conditions (user space has no LSM label
  for most files, but it does have the path it opened);
* ``cache=no``: re-verify the object at every use.

Loading is all or nothing, as in the kernel: :func:`parse_policy` either returns every
rule or raises :class:`~imaguard.PolicyError` listing *every* malformed line as
``FILE:LINE:COL: reason``.

A comment line ``#@ version N`` gives the policy's version (used by policy sets to
refuse rollbacks); the kernel sees an ordinary comment.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

from imaguard.errors import PolicyError
from imaguard.formats.hashalgo import ALGORITHMS
from imaguard.formats.template import TEMPLATES
from imaguard.policy._ast import (
    FILE_HOOKS,
    FUNC_ALIASES,
    LSM_FIELDS,
    MASKS,
    POLICY_FUNCS,
    READ_HOOKS,
    Action,
    IdCondition,
    Rule,
)

__all__ = ["Mode", "Policy", "parse_policy", "parse_rule"]

Mode = Literal["kernel", "imaguard"]

MAX_KERNEL_LINE = 4095
"""The kernel parses one write of at most PAGE_SIZE - 1 bytes as one rule."""
MAX_IMAGUARD_LINE = 65536
MAX_RULES = 1_000_000

_APP_HOOK = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_VERSION = re.compile(r"#@\s*version\s+(\d{1,18})\s*\Z")

_ACTIONS = {a.value: a for a in Action}
_ID_KEYS = {"uid", "euid", "gid", "egid", "fowner", "fgroup"}
_VALUE_KEYS = {
    "func",
    "mask",
    "fsmagic",
    "fsname",
    "fs_subtype",
    "fsuuid",
    "keyrings",
    "label",
    "pcr",
    "template",
    "appraise_type",
    "appraise_flag",
    "appraise_algos",
    "digest_type",
    *LSM_FIELDS,
}
_EXTENSION_KEYS = {"path", "path_prefix", "cache"}

# Flag names, as the kernel's IMA_* rule flags.
_STD = frozenset(
    {
        "FUNC",
        "MASK",
        "INMASK",
        "FSMAGIC",
        "FSUUID",
        "FSNAME",
        "FS_SUBTYPE",
        "UID",
        "EUID",
        "GID",
        "EGID",
        "FOWNER",
        "FGROUP",
        "PCR",
        "PERMIT_DIRECTIO",
    }
)
_EXT = frozenset({"PATH", "CACHE"})
_ALLOWED: dict[str, frozenset[str]] = {
    "file": _STD | {"DIGSIG_REQUIRED", "VALIDATE_ALGOS", "CHECK_BLACKLIST", "VERITY_REQUIRED"},
    "read": _STD | {"DIGSIG_REQUIRED", "MODSIG_ALLOWED", "CHECK_BLACKLIST", "VALIDATE_ALGOS"},
    "KEXEC_CMDLINE": frozenset(
        {
            "FUNC",
            "FSMAGIC",
            "FSUUID",
            "FSNAME",
            "FS_SUBTYPE",
            "UID",
            "EUID",
            "GID",
            "EGID",
            "FOWNER",
            "FGROUP",
            "PCR",
        }
    ),
    "KEY_CHECK": frozenset({"FUNC", "UID", "GID", "PCR", "KEYRINGS"}),
    "CRITICAL_DATA": frozenset({"FUNC", "UID", "GID", "PCR", "LABEL"}),
    "SETXATTR_CHECK": frozenset({"FUNC", "VALIDATE_ALGOS"}),
    "app": _STD
    | {"DIGSIG_REQUIRED", "MODSIG_ALLOWED", "CHECK_BLACKLIST", "VALIDATE_ALGOS", "VERITY_REQUIRED"},
}
_FLAG_TOKEN = {
    "FUNC": "func=",
    "MASK": "mask=",
    "INMASK": "mask=^",
    "FSMAGIC": "fsmagic=",
    "FSUUID": "fsuuid=",
    "FSNAME": "fsname=",
    "FS_SUBTYPE": "fs_subtype=",
    "UID": "uid",
    "EUID": "euid",
    "GID": "gid",
    "EGID": "egid",
    "FOWNER": "fowner",
    "FGROUP": "fgroup",
    "PCR": "pcr=",
    "PERMIT_DIRECTIO": "permit_directio",
    "DIGSIG_REQUIRED": "appraise_type=",
    "MODSIG_ALLOWED": "appraise_type=imasig|modsig",
    "CHECK_BLACKLIST": "appraise_type=",
    "VALIDATE_ALGOS": "appraise_algos=",
    "VERITY_REQUIRED": "digest_type=verity",
    "KEYRINGS": "keyrings=",
    "LABEL": "label=",
    "PATH": "path=",
    "CACHE": "cache=",
}


@dataclass(frozen=True)
class Policy:
    """A parsed policy: its rules in order, where it came from, and its version."""

    rules: tuple[Rule, ...]
    source: str = "<policy>"
    mode: Mode = "kernel"
    version: int | None = None

    def text(self) -> str:
        """The canonical read-back text (one line per rule)."""
        return "".join(r.read_back() for r in self.rules)

    def __len__(self) -> int:
        return len(self.rules)


class _RuleError(Exception):
    def __init__(self, column: int, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


def _kstrtoul(text: str, base: int) -> int | None:
    """The kernel's kstrtoul: optional '+', base-16 may have 0x; digits only; fits 64 bits."""
    s = text[1:] if text.startswith("+") else text
    if base == 16 and s[:2].lower() == "0x":
        s = s[2:]
    digits = "0123456789abcdefABCDEF" if base == 16 else "0123456789"
    if not s or any(c not in digits for c in s):
        return None
    value = int(s, base)
    return value if value < 1 << 64 else None


def _kstrtoint(text: str) -> int | None:
    neg = text.startswith("-")
    body = text[1:] if neg or text.startswith("+") else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    value = -int(body) if neg else int(body)
    return value if -(1 << 31) <= value < 1 << 31 else None


def _id_value(text: str) -> int | None:
    value = _kstrtoul(text, 10)
    # Must fit uid_t/gid_t, and (uid_t)-1 is the invalid id.
    if value is None or value >= 0xFFFFFFFF:
        return None
    return value


def _opt_list(value: str, what: str, col: int) -> tuple[str, ...]:
    items = value.split("|")
    if any(item == "" for item in items):
        raise _RuleError(col, f"{what}= has an empty item in {value!r}")
    return tuple(items)


_ALGO_NAMES = {a.name for a in ALGORITHMS}
_ALGO_IDS = {a.name: a.id for a in ALGORITHMS}


def by_name_id(name: str) -> int:
    return _ALGO_IDS[name]


class _RuleBuilder:
    """Token-by-token state, mirroring ima_parse_rule's order-sensitive checks."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.fields: dict[str, object] = {}
        self.flags: dict[str, int] = {}  # flag -> column of the token that set it
        self.action: Action | None = None
        self.lsm: dict[str, str] = {}

    def flag(self, name: str, col: int) -> None:
        self.flags.setdefault(name, col)

    def token(self, tok: str, col: int) -> None:
        if tok in _ACTIONS:
            if self.action is not None:
                raise _RuleError(col, f"second action {tok!r} (a rule has exactly one action)")
            self.action = _ACTIONS[tok]
            return
        if tok == "permit_directio":
            self.fields["permit_directio"] = True
            self.flag("PERMIT_DIRECTIO", col)
            return
        m = re.match(r"([a-z_]+)([=<>])(.*)\Z", tok, re.DOTALL)
        if m is None:
            raise _RuleError(col, f"unknown token {tok!r}")
        key, op, value = m.groups()
        if value == "":
            raise _RuleError(col, f"{key}{op} needs a value")
        if op != "=" and key not in _ID_KEYS:
            raise _RuleError(col, f"unknown token {tok!r} ({key} takes '=')")
        if key in _ID_KEYS:
            self._id(key, op, value, col)
        elif key in _VALUE_KEYS:
            getattr(self, f"_opt_{key}")(value, col)
        elif key in _EXTENSION_KEYS:
            if self.mode != "imaguard":
                raise _RuleError(col, f"{key}= is an imaguard extension (use imaguard mode)")
            getattr(self, f"_ext_{key}")(value, col)
        else:
            raise _RuleError(col, f"unknown token {tok!r}")

    # -- conditions ---------------------------------------------------------------
    def _opt_func(self, value: str, col: int) -> None:
        if "func" in self.fields:
            raise _RuleError(col, "func= given twice in one rule")
        name = FUNC_ALIASES.get(value, value)
        if name not in POLICY_FUNCS:
            if self.mode == "imaguard" and _APP_HOOK.match(value) and value != "POST_SETATTR":
                self.fields["app_hook"] = True
            else:
                hint = " (application hooks need imaguard mode)" if _APP_HOOK.match(value) else ""
                raise _RuleError(col, f"unknown func {value!r}{hint}")
        self.fields["func"] = name
        self.flag("FUNC", col)

    def _opt_mask(self, value: str, col: int) -> None:
        if "mask" in self.fields:
            raise _RuleError(col, "mask= given twice in one rule")
        inmask = value.startswith("^")
        name = value[1:] if inmask else value
        if name not in MASKS:
            raise _RuleError(
                col, f"unknown mask {value!r} (MAY_EXEC, MAY_WRITE, MAY_READ, MAY_APPEND)"
            )
        self.fields["mask"] = MASKS[name]
        self.fields["inmask"] = inmask
        self.flag("INMASK" if inmask else "MASK", col)

    def _opt_fsmagic(self, value: str, col: int) -> None:
        if self.fields.get("fsmagic"):
            raise _RuleError(col, "fsmagic= given twice in one rule")
        magic = _kstrtoul(value, 16)
        if magic is None:
            raise _RuleError(col, f"fsmagic={value!r} is not a hexadecimal number")
        self.fields["fsmagic"] = magic
        self.flag("FSMAGIC", col)

    def _opt_fsname(self, value: str, col: int) -> None:
        self.fields["fsname"] = value  # the kernel keeps the last one
        self.flag("FSNAME", col)

    def _opt_fs_subtype(self, value: str, col: int) -> None:
        if "fs_subtype" in self.fields:
            raise _RuleError(col, "fs_subtype= given twice in one rule")
        self.fields["fs_subtype"] = value
        self.flag("FS_SUBTYPE", col)

    def _opt_fsuuid(self, value: str, col: int) -> None:
        if "fsuuid" in self.fields:
            raise _RuleError(col, "fsuuid= given twice in one rule")
        if not _UUID.match(value):
            raise _RuleError(col, f"fsuuid={value!r} is not a UUID (8-4-4-4-12 hex digits)")
        self.fields["fsuuid"] = uuid.UUID(value)
        self.flag("FSUUID", col)

    def _id(self, key: str, op: str, value: str, col: int) -> None:
        slot = {"euid": "uid", "egid": "gid"}.get(key, key)
        if slot in self.fields:
            other = "uid/euid" if slot == "uid" else "gid/egid" if slot == "gid" else slot
            raise _RuleError(
                col, f"{key}{op} conflicts with an earlier {other} condition (one per rule)"
            )
        number = _id_value(value)
        if number is None:
            raise _RuleError(col, f"{key}{op}{value} is not a valid id (0-4294967294)")
        self.fields[slot] = IdCondition(op, number, effective=key in ("euid", "egid"))
        self.flag(key.upper(), col)

    def _lsm(self, key: str, value: str, col: int) -> None:
        if key in self.lsm:
            raise _RuleError(col, f"{key}= given twice in one rule")
        self.lsm[key] = value
        self.flags.setdefault("LSM", col)

    def _opt_obj_user(self, value: str, col: int) -> None:
        self._lsm("obj_user", value, col)

    def _opt_obj_role(self, value: str, col: int) -> None:
        self._lsm("obj_role", value, col)

    def _opt_obj_type(self, value: str, col: int) -> None:
        self._lsm("obj_type", value, col)

    def _opt_subj_user(self, value: str, col: int) -> None:
        self._lsm("subj_user", value, col)

    def _opt_subj_role(self, value: str, col: int) -> None:
        self._lsm("subj_role", value, col)

    def _opt_subj_type(self, value: str, col: int) -> None:
        self._lsm("subj_type", value, col)

    def _opt_keyrings(self, value: str, col: int) -> None:
        if "keyrings" in self.fields:
            raise _RuleError(col, "keyrings= given twice in one rule")
        self.fields["keyrings"] = _opt_list(value, "keyrings", col)
        self.flag("KEYRINGS", col)

    def _opt_label(self, value: str, col: int) -> None:
        if "labels" in self.fields:
            raise _RuleError(col, "label= given twice in one rule")
        self.fields["labels"] = _opt_list(value, "label", col)
        self.flag("LABEL", col)

    # -- options --------------------------------------------------------------------
    def _opt_pcr(self, value: str, col: int) -> None:
        pcr = _kstrtoint(value)
        if pcr is None or not 0 <= pcr < 64:
            raise _RuleError(col, f"pcr={value} is not a PCR index (0-63)")
        self.fields["pcr"] = pcr
        self.flag("PCR", col)

    def _opt_template(self, value: str, col: int) -> None:
        if self.action is not Action.MEASURE:
            raise _RuleError(col, "template= must come after the measure action")
        name = (
            value
            if value in TEMPLATES
            else next((n for n, fields in TEMPLATES.items() if "|".join(fields) == value), None)
        )
        if name is None:
            raise _RuleError(col, f"unknown template {value!r} (known: {', '.join(TEMPLATES)})")
        if "template" in self.fields:
            raise _RuleError(col, "template= given twice in one rule")
        self.fields["template"] = name

    def _opt_digest_type(self, value: str, col: int) -> None:
        if self.flags.get("DIGSIG_REQUIRED") is not None:
            raise _RuleError(col, "digest_type= must come before appraise_type=")
        if value != "verity":
            raise _RuleError(col, f"digest_type={value!r}: the only digest type is 'verity'")
        self.fields["digest_type"] = "verity"
        self.flag("VERITY_REQUIRED", col)

    def _opt_appraise_type(self, value: str, col: int) -> None:
        verity = "VERITY_REQUIRED" in self.flags
        if value == "imasig":
            if verity:
                raise _RuleError(
                    col,
                    "appraise_type=imasig cannot follow digest_type=verity "
                    "(use appraise_type=sigv3)",
                )
        elif value == "sigv3":
            if not verity:
                raise _RuleError(
                    col,
                    "appraise_type=sigv3 needs digest_type=verity before it "
                    "(only fs-verity supports sigv3)",
                )
        elif value == "imasig|modsig":
            if verity:
                raise _RuleError(
                    col, "appraise_type=imasig|modsig cannot follow digest_type=verity"
                )
            self.flag("MODSIG_ALLOWED", col)
        elif value == "digestlist":
            if self.mode != "imaguard":
                raise _RuleError(
                    col, "appraise_type=digestlist is an imaguard extension (use imaguard mode)"
                )
            if verity:
                raise _RuleError(col, "appraise_type=digestlist cannot follow digest_type=verity")
        else:
            raise _RuleError(
                col,
                f"unknown appraise_type {value!r} (imasig, imasig|modsig, sigv3"
                + (", digestlist)" if self.mode == "imaguard" else ")"),
            )
        # A second appraise_type is not refused by the kernel: the flags accumulate.
        if self.fields.get("appraise_type") == "imasig|modsig" and value == "imasig":
            value = "imasig|modsig"
        self.fields["appraise_type"] = value
        self.flag("DIGSIG_REQUIRED", col)
        self.flag("CHECK_BLACKLIST", col)

    def _opt_appraise_flag(self, value: str, col: int) -> None:
        """Deprecated in the baseline kernel: accepted, logged and ignored."""

    def _opt_appraise_algos(self, value: str, col: int) -> None:
        if "appraise_algos" in self.fields:
            raise _RuleError(col, "appraise_algos= given twice in one rule")
        names = value.split(",")
        for name in names:
            if name not in _ALGO_NAMES:
                raise _RuleError(col, f"appraise_algos: unknown hash algorithm {name!r}")
        # Kept in the kernel's print order (ascending id), duplicates dropped, so a rule
        # and its read-back line are equal.
        self.fields["appraise_algos"] = tuple(sorted(set(names), key=by_name_id))
        self.flag("VALIDATE_ALGOS", col)

    # -- imaguard extensions --------------------------------------------------------
    def _ext_path(self, value: str, col: int) -> None:
        self._path_condition("path", value, col)

    def _ext_path_prefix(self, value: str, col: int) -> None:
        self._path_condition("path_prefix", value, col)

    def _path_condition(self, key: str, value: str, col: int) -> None:
        if "path" in self.fields or "path_prefix" in self.fields:
            raise _RuleError(col, "one path= or path_prefix= per rule")
        if not value.startswith("/"):
            raise _RuleError(col, f"{key}={value!r} must be absolute")
        self.fields[key] = value
        self.flag("PATH", col)

    def _ext_cache(self, value: str, col: int) -> None:
        if value not in ("no", "yes"):
            raise _RuleError(col, f"cache={value!r}: use cache=no or cache=yes")
        self.fields["cache"] = value == "yes"
        self.flag("CACHE", col)

    # -- ima_validate_rule ------------------------------------------------------------
    def build(self, line: int) -> Rule:
        if self.action is None:
            raise _RuleError(
                1,
                "no action (measure, dont_measure, appraise, dont_appraise, "
                "audit, dont_audit, hash, dont_hash)",
            )
        action = self.action
        flags = self.flags
        if "PCR" in flags and action is not Action.MEASURE:
            raise _RuleError(flags["PCR"], "pcr= is only valid with the measure action")
        for f in ("DIGSIG_REQUIRED", "MODSIG_ALLOWED", "CHECK_BLACKLIST", "VALIDATE_ALGOS"):
            if f in flags and action is not Action.APPRAISE:
                raise _RuleError(
                    flags[f], f"{_FLAG_TOKEN[f]} is only valid with the appraise action"
                )
        func = self.fields.get("func")
        if self.fields.get("app_hook"):
            group = "app"
        elif func is None or func in FILE_HOOKS:
            group = "file"
        elif func in READ_HOOKS:
            group = "read"
        else:
            group = str(func)
        allowed = _ALLOWED[group]
        if group in ("file", "read", "app"):
            allowed = allowed | _EXT
        where = f"func={func}" if func else "a rule without func="
        if group in ("KEXEC_CMDLINE", "KEY_CHECK", "CRITICAL_DATA") and action not in (
            Action.MEASURE,
            Action.DONT_MEASURE,
        ):
            raise _RuleError(1, f"{where} allows only measure and dont_measure")
        if group == "SETXATTR_CHECK":
            if action is not Action.APPRAISE:
                raise _RuleError(1, f"{where} allows only the appraise action")
            if "VALIDATE_ALGOS" not in flags:
                raise _RuleError(1, f"{where} needs appraise_algos=")
        for f, col in flags.items():
            if f == "LSM":
                if group in ("KEY_CHECK", "CRITICAL_DATA"):
                    raise _RuleError(col, f"LSM conditions are not allowed with {where}")
                continue
            if f not in allowed:
                raise _RuleError(col, f"{_FLAG_TOKEN.get(f, f)} is not allowed with {where}")
        if (
            action is Action.APPRAISE
            and "VERITY_REQUIRED" in flags
            and "DIGSIG_REQUIRED" not in flags
        ):
            raise _RuleError(
                flags["VERITY_REQUIRED"],
                "appraise with digest_type=verity needs appraise_type=sigv3",
            )
        kwargs = {k: v for k, v in self.fields.items() if k != "app_hook"}
        lsm = tuple((k, self.lsm[k]) for k in LSM_FIELDS if k in self.lsm)
        return Rule(action=action, lsm=lsm, line=line, **kwargs)  # type: ignore[arg-type]


def _tokens(text: str) -> list[tuple[str, int]]:
    """Split at spaces and tabs (as strsep(" \\t")), with 1-based columns; '#' ends the rule."""
    out: list[tuple[str, int]] = []
    for m in re.finditer(r"[^ \t]+", text):
        if m.group().startswith("#"):
            break
        out.append((m.group(), m.start() + 1))
    return out


def parse_rule(text: str, *, mode: Mode = "kernel", line: int = 0) -> Rule:
    """Parse one rule; PolicyError (with the column) when the kernel would refuse it."""
    builder = _RuleBuilder(mode)
    if text.endswith("\n"):
        text = text[:-1]  # one write is parsed up to its newline (ima_fs.c ima_write_policy)
    try:
        stripped = text.lstrip(" \t")
        offset = len(text) - len(stripped)
        tokens = _tokens(stripped)
        if not tokens:
            raise _RuleError(1, "empty rule")
        for tok, col in tokens:
            builder.token(tok, col + offset)
        return builder.build(line)
    except _RuleError as e:
        raise PolicyError(
            f"<rule>:{line}:{e.column}: {e.reason}", [("<rule>", line, e.column, e.reason)]
        ) from None


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        reason = f"bytes that are not UTF-8 (0x{data[e.start]:02x})"
        raise PolicyError(
            f"{source}:{line}:{col}: {reason}", [(source, line, col, reason)]
        ) from None


def parse_policy(
    text: str | bytes,
    *,
    mode: Mode = "kernel",
    source: str = "<policy>",
    max_problems: int | None = None,
) -> Policy:
    """Parse a whole policy, all or nothing.

    Raises PolicyError listing every malformed line (or the first ``max_problems``) when any
    line is malformed, when a NUL byte or a line longer than the kernel takes appears,
    or when the policy has no rule at all (the kernel refuses an empty write cycle).
    """
    if mode not in ("kernel", "imaguard"):
        raise PolicyError(f"unknown policy mode {mode!r} (kernel or imaguard)")
    if isinstance(text, bytes | bytearray):
        text = _decode(bytes(text), source)
    else:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            line = text.count("\n", 0, e.start) + 1
            col = e.start - (text.rfind("\n", 0, e.start) + 1) + 1
            reason = "text that is not UTF-8 (a lone surrogate)"
            raise PolicyError(
                f"{source}:{line}:{col}: {reason}", [(source, line, col, reason)]
            ) from None
    problems: list[tuple[str, int, int, str]] = []
    rules: list[Rule] = []
    version: int | None = None
    max_line = MAX_KERNEL_LINE if mode == "kernel" else MAX_IMAGUARD_LINE
    for number, raw in enumerate(text.split("\n"), start=1):
        if max_problems is not None and len(problems) >= max_problems:
            break
        if "\0" in raw:
            problems.append((source, number, raw.index("\0") + 1, "NUL byte in the policy"))
            continue
        if len(raw.encode("utf-8")) > max_line:
            problems.append(
                (
                    source,
                    number,
                    1,
                    f"line is {len(raw.encode('utf-8'))} bytes; at most {max_line} "
                    f"per rule in {mode} mode",
                )
            )
            continue
        body = raw.lstrip(" \t")
        if body == "" or body.startswith("#"):
            m = _VERSION.match(body.rstrip("\r"))
            if m:
                version = int(m.group(1))
            continue
        if len(rules) >= MAX_RULES:
            problems.append((source, number, 1, f"more than {MAX_RULES} rules"))
            break
        try:
            builder = _RuleBuilder(mode)
            offset = len(raw) - len(body)
            for tok, col in _tokens(body):
                builder.token(tok, col + offset)
            rules.append(builder.build(number))
        except _RuleError as e:
            reason = e.reason
            if "\r" in raw:
                reason += " (the line has a carriage return: CRLF line endings are not accepted)"
            problems.append((source, number, e.column, reason))
    if problems:
        lines = [f"{s}:{ln}:{col}: {reason}" for s, ln, col, reason in problems]
        raise PolicyError("\n".join(lines), problems)
    if not rules:
        raise PolicyError(
            f"{source}: the policy has no rules (the kernel refuses an empty load)",
            [(source, 1, 1, "the policy has no rules")],
        )
    return Policy(tuple(rules), source, mode, version)
