"""The kernel's built-in policies, rule by rule (spec kernel-ima.md §1.7).

Select them as the kernel's ``ima_policy=`` does: names separated by ``|``, ``,``, spaces
or newlines, from ``tcb``, ``ima_tcb``, ``appraise_tcb`` (alias ``ima_appraise_tcb``),
``secure_boot``, ``critical_data`` and ``fail_securely``. The rules are assembled in the
kernel's boot order: the dont_measure set, the tcb rules, secure_boot, appraise_tcb,
critical_data. ``fail_securely`` adds no rule; it marks every appraisal as failing on
filesystems with unverifiable signatures (:attr:`Builtin.fail_securely`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imaguard.errors import PolicyError
from imaguard.policy._parser import Policy, parse_policy

__all__ = ["BUILTIN_NAMES", "FS_MAGIC", "Builtin", "builtin_policy"]

FS_MAGIC = {
    "PROC_SUPER": 0x9FA0,
    "SYSFS": 0x62656572,
    "DEBUGFS": 0x64626720,
    "TMPFS": 0x01021994,
    "RAMFS": 0x858458F6,
    "DEVPTS_SUPER": 0x1CD1,
    "BINFMTFS": 0x42494E4D,
    "SECURITYFS": 0x73636673,
    "SELINUX": 0xF97CFF8C,
    "SMACK": 0x43415D53,
    "CGROUP_SUPER": 0x27E0EB,
    "CGROUP2_SUPER": 0x63677270,
    "NSFS": 0x6E736673,
    "EFIVARFS": 0xDE5E81E4,
}


def _m(name: str) -> str:
    return f"0x{FS_MAGIC[name]:x}"


_DONT_MEASURE = [
    f"dont_measure fsmagic={_m('PROC_SUPER')}",
    f"dont_measure fsmagic={_m('SYSFS')}",
    f"dont_measure fsmagic={_m('DEBUGFS')}",
    f"dont_measure fsmagic={_m('TMPFS')} func=FILE_CHECK",
    f"dont_measure fsmagic={_m('DEVPTS_SUPER')}",
    f"dont_measure fsmagic={_m('BINFMTFS')}",
    f"dont_measure fsmagic={_m('SECURITYFS')}",
    f"dont_measure fsmagic={_m('SELINUX')}",
    f"dont_measure fsmagic={_m('SMACK')}",
    f"dont_measure fsmagic={_m('CGROUP_SUPER')}",
    f"dont_measure fsmagic={_m('CGROUP2_SUPER')}",
    f"dont_measure fsmagic={_m('NSFS')}",
    f"dont_measure fsmagic={_m('EFIVARFS')}",
]

_ORIGINAL_TCB = [
    "measure func=MMAP_CHECK mask=MAY_EXEC",
    "measure func=BPRM_CHECK mask=MAY_EXEC",
    "measure func=FILE_CHECK mask=MAY_READ uid=0",
    "measure func=MODULE_CHECK",
    "measure func=FIRMWARE_CHECK",
]

_DEFAULT_TCB = [
    "measure func=MMAP_CHECK mask=MAY_EXEC",
    "measure func=BPRM_CHECK mask=MAY_EXEC",
    "measure func=FILE_CHECK mask=^MAY_READ euid=0",
    "measure func=FILE_CHECK mask=^MAY_READ uid=0",
    "measure func=MODULE_CHECK",
    "measure func=FIRMWARE_CHECK",
    "measure func=POLICY_CHECK",
]

_APPRAISE_TCB = [
    *(
        f"dont_appraise fsmagic={_m(n)}"
        for n in (
            "PROC_SUPER",
            "SYSFS",
            "DEBUGFS",
            "TMPFS",
            "RAMFS",
            "DEVPTS_SUPER",
            "BINFMTFS",
            "SECURITYFS",
            "SELINUX",
            "SMACK",
            "NSFS",
            "EFIVARFS",
            "CGROUP_SUPER",
            "CGROUP2_SUPER",
        )
    ),
    "appraise fowner=0",
]

_SECURE_BOOT = [
    "appraise func=MODULE_CHECK appraise_type=imasig",
    "appraise func=FIRMWARE_CHECK appraise_type=imasig",
    "appraise func=KEXEC_KERNEL_CHECK appraise_type=imasig",
    "appraise func=POLICY_CHECK appraise_type=imasig",
]

_CRITICAL_DATA = ["measure func=CRITICAL_DATA"]

BUILTIN_NAMES = (
    "tcb",
    "ima_tcb",
    "appraise_tcb",
    "ima_appraise_tcb",
    "secure_boot",
    "critical_data",
    "fail_securely",
)


@dataclass(frozen=True)
class Builtin:
    """The assembled boot policy for a list of built-in names."""

    policy: Policy
    names: tuple[str, ...]
    fail_securely: bool


def builtin_policy(names: str | list[str] | tuple[str, ...]) -> Builtin:
    """Assemble the kernel's boot policy for ``names`` (a string as ``ima_policy=``, or a list)."""
    if isinstance(names, str):
        items = [n for n in re.split(r"[|,\s]+", names) if n]
    else:
        items = [n for part in names for n in re.split(r"[|,\s]+", part) if n]
    unknown = [n for n in items if n not in BUILTIN_NAMES]
    if unknown:
        raise PolicyError(
            f"policy {unknown[0]!r} not found (built-ins: {', '.join(BUILTIN_NAMES)})"
        )
    if not items:
        raise PolicyError("no built-in policy named")
    chosen = set(items)
    tcb: list[str] = []
    # tcb is ignored if ima_tcb came first, and the reverse (the kernel keeps the first).
    for n in items:
        if n in ("tcb", "ima_tcb"):
            tcb = _DEFAULT_TCB if n == "tcb" else _ORIGINAL_TCB
            break
    lines: list[str] = []
    if tcb:
        lines += _DONT_MEASURE + tcb
    if "secure_boot" in chosen:
        lines += _SECURE_BOOT
    if chosen & {"appraise_tcb", "ima_appraise_tcb"}:
        lines += _APPRAISE_TCB
    if "critical_data" in chosen:
        lines += _CRITICAL_DATA
    label = "builtin:" + "|".join(dict.fromkeys(items))
    if not lines:
        # fail_securely alone adds no rule: an empty policy that changes nothing.
        return Builtin(
            Policy((), label, "kernel", None),
            tuple(dict.fromkeys(items)),
            "fail_securely" in chosen,
        )
    policy = parse_policy("\n".join(lines) + "\n", source=label)
    return Builtin(policy, tuple(dict.fromkeys(items)), "fail_securely" in chosen)
