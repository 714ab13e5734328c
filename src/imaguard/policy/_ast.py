"""The typed policy AST: frozen rules, and the kernel's names for hooks, masks and templates.

A :class:`Rule` is one line of an IMA policy. It is immutable and compares by content
(its source position is carried along but not compared). ``Rule.canonical()`` prints
it in the kernel's read-back format (``ima_policy_show()`` in
security/integrity/ima/ima_policy.c): fields in a fixed
order, each followed by one space. Two deliberate differences keep every printed line
re-parseable: ``digest_type=verity`` comes before ``appraise_type=sigv3`` (the kernel
prints them the other way round, which its parser rejects), and ids are printed
unsigned (the kernel prints ``%d``, so uid 4000000000 would read back negative).
The flags the kernel derives from options (DIGSIG_REQUIRED, MODSIG_ALLOWED, ...) are
properties, so they can never disagree with the options that imply them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from imaguard.formats.hashalgo import by_name

__all__ = [
    "ACTION_KINDS",
    "FILE_HOOKS",
    "KERNEL_FUNCS",
    "MASKS",
    "Action",
    "IdCondition",
    "Rule",
    "mask_names",
]


class Action(StrEnum):
    """A rule's action, as the kernel's policy grammar spells it (``dont_X`` stops ``X``)."""

    MEASURE = "measure"
    DONT_MEASURE = "dont_measure"
    APPRAISE = "appraise"
    DONT_APPRAISE = "dont_appraise"
    AUDIT = "audit"
    DONT_AUDIT = "dont_audit"
    HASH = "hash"
    DONT_HASH = "dont_hash"

    @property
    def kind(self) -> str:
        """The action kind this rule decides: measure, appraise, audit or hash."""
        return self.value.removeprefix("dont_")

    @property
    def positive(self) -> bool:
        return not self.value.startswith("dont_")


ACTION_KINDS = ("measure", "appraise", "audit", "hash")

KERNEL_FUNCS = (
    "FILE_CHECK",
    "MMAP_CHECK",
    "MMAP_CHECK_REQPROT",
    "BPRM_CHECK",
    "CREDS_CHECK",
    "POST_SETATTR",
    "MODULE_CHECK",
    "FIRMWARE_CHECK",
    "KEXEC_KERNEL_CHECK",
    "KEXEC_INITRAMFS_CHECK",
    "POLICY_CHECK",
    "KEXEC_CMDLINE",
    "KEY_CHECK",
    "CRITICAL_DATA",
    "SETXATTR_CHECK",
)
"""Hook names in the kernel's enum order (``POST_SETATTR`` is internal: not valid in ``func=``)."""

FUNC_ALIASES = {"PATH_CHECK": "FILE_CHECK", "FILE_MMAP": "MMAP_CHECK"}

POLICY_FUNCS = frozenset(KERNEL_FUNCS) - {"POST_SETATTR"}
"""What ``func=`` accepts in kernel mode (plus the aliases)."""

FILE_HOOKS = frozenset(
    {
        "FILE_CHECK",
        "MMAP_CHECK",
        "MMAP_CHECK_REQPROT",
        "BPRM_CHECK",
        "CREDS_CHECK",
        "POST_SETATTR",
        "FIRMWARE_CHECK",
        "POLICY_CHECK",
    }
)
READ_HOOKS = frozenset({"MODULE_CHECK", "KEXEC_KERNEL_CHECK", "KEXEC_INITRAMFS_CHECK"})
DATA_HOOKS = frozenset({"KEY_CHECK", "CRITICAL_DATA"})

MASKS = {"MAY_EXEC": 0x1, "MAY_WRITE": 0x2, "MAY_READ": 0x4, "MAY_APPEND": 0x8}


def mask_names(mask: int) -> list[str]:
    """The MAY_* names of the bits set in ``mask``, in the kernel's print order."""
    return [name for name, bit in MASKS.items() if mask & bit]


LSM_FIELDS = ("obj_user", "obj_role", "obj_type", "subj_user", "subj_role", "subj_type")
"""LSM conditions in the kernel's match and print order."""

APPRAISE_TYPES = ("imasig", "imasig|modsig", "sigv3", "digestlist")


@dataclass(frozen=True)
class IdCondition:
    """A uid/gid/fowner/fgroup comparison: ``op`` is '=', '<' or '>'.

    ``effective`` marks ``euid``/``egid`` (which share their slot with uid/gid).
    """

    op: str
    value: int
    effective: bool = False

    def holds(self, actual: int) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "<":
            return actual < self.value
        return actual > self.value


@dataclass(frozen=True)
class Rule:
    """One policy rule. Field names follow the policy tokens."""

    action: Action
    func: str | None = None
    mask: int | None = None
    inmask: bool = False
    fsmagic: int | None = None
    fsname: str | None = None
    fs_subtype: str | None = None
    fsuuid: uuid.UUID | None = None
    uid: IdCondition | None = None
    gid: IdCondition | None = None
    fowner: IdCondition | None = None
    fgroup: IdCondition | None = None
    lsm: tuple[tuple[str, str], ...] = ()
    keyrings: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    pcr: int | None = None
    template: str | None = None
    appraise_type: str | None = None
    appraise_algos: tuple[str, ...] | None = None
    digest_type: str | None = None
    permit_directio: bool = False
    # imaguard-mode extensions (never produced by a kernel-mode parse)
    path: str | None = None
    path_prefix: str | None = None
    cache: bool = True
    # where the rule came from; not part of its identity
    line: int = field(default=0, compare=False)

    # -- flags the kernel derives from the options -------------------------------
    @property
    def digsig_required(self) -> bool:
        return self.appraise_type is not None

    @property
    def modsig_allowed(self) -> bool:
        return self.appraise_type == "imasig|modsig"

    @property
    def digestlist_allowed(self) -> bool:
        """imaguard mode: a digest vouched for by a signed digest list passes too."""
        return self.appraise_type == "digestlist"

    @property
    def check_blacklist(self) -> bool:
        # The baseline kernel sets CHECK_BLACKLIST with every appraise_type.
        return self.appraise_type is not None

    @property
    def verity_required(self) -> bool:
        return self.digest_type == "verity"

    @property
    def lsm_map(self) -> dict[str, str]:
        return dict(self.lsm)

    @property
    def is_extension(self) -> bool:
        """True when the rule uses an imaguard-mode extension."""
        return self.path is not None or self.path_prefix is not None or not self.cache

    def canonical(self) -> str:
        """The rule as the kernel prints it back, without the trailing space and newline."""
        memo = self.__dict__.get("_canonical")
        if memo is None:
            memo = self.read_back().rstrip("\n").rstrip(" ")
            self.__dict__["_canonical"] = memo  # a frozen value: computed once
        return str(memo)

    def read_back(self) -> str:
        """Exactly the kernel's read-back line: each field followed by a space, then a newline."""
        out = [self.action.value, " "]

        def put(text: str) -> None:
            out.append(text)
            out.append(" ")

        if self.func is not None:
            put(f"func={self.func}")
        if self.mask is not None:
            for name in mask_names(self.mask):
                put(f"mask={'^' if self.inmask else ''}{name}")
        if self.fsmagic is not None:
            put(f"fsmagic=0x{self.fsmagic:x}")
        if self.fsname is not None:
            put(f"fsname={self.fsname}")
        if self.fs_subtype is not None:
            put(f"fs_subtype={self.fs_subtype}")
        if self.keyrings is not None:
            put("keyrings=" + "|".join(self.keyrings))
        if self.labels is not None:
            put("label=" + "|".join(self.labels))
        if self.pcr is not None:
            put(f"pcr={self.pcr}")
        if self.fsuuid is not None:
            put(f"fsuuid={self.fsuuid}")
        for name, cond in (("uid", self.uid), ("gid", self.gid)):
            if cond is not None:
                put(f"{'e' if cond.effective else ''}{name}{cond.op}{cond.value}")
        for name, cond in (("fowner", self.fowner), ("fgroup", self.fgroup)):
            if cond is not None:
                put(f"{name}{cond.op}{cond.value}")
        if self.appraise_algos is not None:
            ordered = sorted(self.appraise_algos, key=lambda a: by_name(a).id)
            put("appraise_algos=" + ",".join(ordered))
        lsm = self.lsm_map
        for name in LSM_FIELDS:
            if name in lsm:
                put(f"{name}={lsm[name]}")
        if self.template is not None:
            put(f"template={self.template}")
        # The kernel prints appraise_type=sigv3 before digest_type=verity, an order its own
        # parser refuses; imaguard prints digest_type first so every line re-parses.
        if self.verity_required:
            put("digest_type=verity")
        if self.digsig_required:
            if self.verity_required:
                put("appraise_type=sigv3")
            elif self.modsig_allowed:
                put("appraise_type=imasig|modsig")
            elif self.digestlist_allowed:
                put("appraise_type=digestlist")
            else:
                put("appraise_type=imasig")
        if self.permit_directio:
            put("permit_directio")
        if self.path is not None:
            put(f"path={self.path}")
        if self.path_prefix is not None:
            put(f"path_prefix={self.path_prefix}")
        if not self.cache:
            put("cache=no")
        return "".join(out) + "\n"
