"""Conformance table for the kernel's IMA policy language and matching.

Part A: policy text -> accepted (with its canonical read-back) or rejected (with the
reason and, where it is clear, the column). Part B: policy + request -> the actions,
flags, PCR and template the kernel's ``ima_match_policy`` walk produces. Every row cites
the topic it checks with a label (shown as ``secN.M`` in the test id). The labels, and the
kernel code each one follows (security/integrity/ima/ima_policy.c unless noted; the
grammar is documented in Documentation/ABI/testing/ima_policy):

* ``§1.1`` lines, comments, one write per rule, all or nothing: ``ima_write_policy()`` and
  ``ima_release_policy()`` (ima_fs.c), ``ima_parse_add_rule()``, ``ima_parse_rule()``
* ``§1.2`` actions, exactly one per rule: ``ima_parse_rule()``
* ``§1.3`` conditions (``mask=``, ``fsmagic=``, ids, LSM labels, ...): ``ima_parse_rule()``
* ``§1.4`` ``func=`` hooks and their aliases: ``enum ima_hooks`` (ima.h), ``ima_parse_rule()``
* ``§1.5`` options and their order (``appraise_type=``, ``template=``, ...): ``ima_parse_rule()``
* ``§1.6`` combinations a rule may not have: ``ima_validate_rule()``
* ``§1.7`` built-in policies: the ``*_rules[]`` tables and ``ima_init_policy()``; the
  ``ima_policy=`` boot parameter (Documentation/admin-guide/kernel-parameters.txt)
* ``§2.2`` whether one rule matches a request: ``ima_match_rules()``
* ``§2.3`` first match per action kind, flags, PCR and template: ``ima_match_policy()``

Part B rows are checked against both the naive walk and the compiled index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from helpers.policy import acts, decide_both, req, rules_of
from imaguard.errors import PolicyError
from imaguard.policy import Request, builtin_policy, parse_policy
from imaguard.policy._ast import POLICY_FUNCS

# --------------------------------------------------------------------------------------
# Part A: accepted / rejected
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parse:
    cite: str
    text: str
    canon: str | None  # expected canonical rules ("\n"-separated); None = rejected
    why: str | None = None  # a word the rejection reason must contain
    col: int | None = None  # the column the error must point at
    mode: str = "kernel"
    line: int | None = 1  # the line the first problem is on; None = the whole file is at fault


def ok(cite: str, text: str, canon: str | None = None, mode: str = "kernel") -> Parse:
    return Parse(cite, text, text.strip() if canon is None else canon, mode=mode)


def bad(cite: str, text: str, why: str | None = None, col: int | None = None) -> Parse:
    return Parse(cite, text, None, why, col)


def bad_file(cite: str, text: str, why: str) -> Parse:
    """Rejected as a whole (no line to point at): the message is ``FILE: reason``."""
    return Parse(cite, text, None, why, line=None)


FUNC_ROWS = [
    ok("§1.4", f"measure func={f}") for f in sorted(POLICY_FUNCS) if f not in ("SETXATTR_CHECK",)
] + [ok("§1.4", "appraise func=SETXATTR_CHECK appraise_algos=sha256")]

PARSE_ROWS: list[Parse] = [
    # §1.2 actions: exactly one per rule
    *(
        ok("§1.2", a)
        for a in (
            "measure",
            "dont_measure",
            "appraise",
            "dont_appraise",
            "audit",
            "hash",
            "dont_hash",
        )
    ),
    bad("§1.2", "measure appraise", "second action", 9),
    bad("§1.2", "measure measure", "second action", 9),
    bad("§1.2", "dont_hash hash", "second action", 11),
    # dont_audit and fs_subtype= (mainline, October 2025: ima_policy.c Opt_dont_audit,
    # Opt_fs_subtype): one subtype per rule, printed after fsname=
    ok("§1.2", "dont_audit"),
    ok("§1.2", "dont_audit fs_subtype=sshfs"),
    bad("§1.2", "dont_audit audit", "second action", 12),
    ok("§1.3", "measure fs_subtype=gvfsd fsname=fuse", "measure fsname=fuse fs_subtype=gvfsd"),
    bad("§1.3", "measure fs_subtype=a fs_subtype=b", "twice", 22),
    bad("§1.6", "measure func=KEY_CHECK fs_subtype=x", "fs_subtype", 24),
    bad("§1.6", "func=FILE_CHECK", "action"),
    bad("§1.6", "fsmagic=0x9fa0 mask=MAY_READ", "action"),
    bad("§1.1", "Measure"),
    bad("§1.1", "MEASURE func=FILE_CHECK"),
    # §1.4 func= values, aliases, unknown names
    *FUNC_ROWS,
    ok("§1.4", "measure func=PATH_CHECK", "measure func=FILE_CHECK"),
    ok("§1.4", "measure func=FILE_MMAP", "measure func=MMAP_CHECK"),
    bad("§1.4", "measure func=POST_SETATTR", "POST_SETATTR", 9),
    bad("§1.4", "measure func=PLUGIN_CHECK", "func", 9),
    bad("§1.4", "measure func=file_check", "func", 9),
    bad("§1.4", "measure func=", None, 9),
    bad("§1.5", "measure func=FILE_CHECK func=FILE_CHECK", "func", 25),
    bad("§1.5", "measure func=FILE_CHECK func=BPRM_CHECK", "func", 25),
    # §1.3 mask
    *(ok("§1.3", f"measure mask={m}") for m in ("MAY_EXEC", "MAY_WRITE", "MAY_READ", "MAY_APPEND")),
    *(
        ok("§1.3", f"measure mask=^{m}")
        for m in ("MAY_EXEC", "MAY_WRITE", "MAY_READ", "MAY_APPEND")
    ),
    bad("§1.3", "measure mask=MAY_OPEN", "mask", 9),
    bad("§1.3", "measure mask=may_read", "mask", 9),
    bad("§1.3", "measure mask=^", "mask", 9),
    bad("§1.3", "measure mask=^^MAY_READ", "mask", 9),
    bad("§1.3", "measure mask=MAY_READ|MAY_WRITE", "mask", 9),
    bad("§1.5", "measure mask=MAY_READ mask=MAY_READ", "mask", 23),
    bad("§1.5", "measure mask=^MAY_READ mask=MAY_EXEC", "mask", 24),
    # §1.3 fsmagic: hexadecimal with or without 0x, once
    ok("§1.3", "measure fsmagic=9fa0", "measure fsmagic=0x9fa0"),
    ok("§1.3", "measure fsmagic=0x9FA0", "measure fsmagic=0x9fa0"),
    ok("§1.3", "measure fsmagic=0X9fa0", "measure fsmagic=0x9fa0"),
    ok("§1.3", "measure fsmagic=01021994", "measure fsmagic=0x1021994"),
    ok("§1.3", "measure fsmagic=+ef53", "measure fsmagic=0xef53"),
    ok("§1.3", "measure fsmagic=0xffffffffffffffff"),
    bad("§1.3", "measure fsmagic=0x10000000000000000", "fsmagic", 9),
    bad("§1.3", "measure fsmagic=xyz", "fsmagic", 9),
    bad("§1.3", "measure fsmagic=0x", "fsmagic", 9),
    bad("§1.3", "measure fsmagic=-1", "fsmagic", 9),
    bad("§1.3", "measure fsmagic=0x9fa0 fsmagic=0x9fa0", "fsmagic", 24),
    bad("§1.3", "measure fsmagic=0x9fa0 fsmagic=0xef53", "fsmagic", 24),
    bad("§1.5", "measure fsmagic<5"),
    # §1.3 fsname: no duplicate check, the later one wins
    ok("§1.3", "measure fsname=ext4"),
    ok("§1.3", "measure fsname=ext4 fsname=xfs", "measure fsname=xfs"),
    ok("§1.3", "measure fsname=tmpfs fsname=ext4 fsname=btrfs", "measure fsname=btrfs"),
    # §1.3 fsuuid: canonical 8-4-4-4-12, printed lower case, once
    ok("§1.3", "measure fsuuid=0123abcd-4567-89ab-cdef-0123456789ab"),
    ok(
        "§1.3",
        "measure fsuuid=0123ABCD-4567-89AB-CDEF-0123456789AB",
        "measure fsuuid=0123abcd-4567-89ab-cdef-0123456789ab",
    ),
    bad("§1.3", "measure fsuuid=0123abcd456789abcdef0123456789ab", "fsuuid", 9),
    bad("§1.3", "measure fsuuid={0123abcd-4567-89ab-cdef-0123456789ab}", "fsuuid", 9),
    bad("§1.3", "measure fsuuid=0123abcd-4567-89ab-cdef-0123456789a", "fsuuid", 9),
    bad("§1.3", "measure fsuuid=0123abcd-4567-89ab-cdef-0123456789ag", "fsuuid", 9),
    bad("§1.3", "measure fsuuid=0123abcd-4567-89ab-cdef-0123456789abc", "fsuuid", 9),
    bad(
        "§1.5",
        "measure fsuuid=0123abcd-4567-89ab-cdef-0123456789ab "
        "fsuuid=0123abcd-4567-89ab-cdef-0123456789ab",
        "fsuuid",
        53,
    ),
    # §1.3 ids: = < >, uid/euid one slot, gid/egid one slot, decimal, fits uid_t, not -1
    *(
        ok("§1.3", f"measure {k}{op}{v}")
        for k in ("uid", "euid", "gid", "egid", "fowner", "fgroup")
        for op, v in (("=", 0), ("<", 1000), (">", 1000))
    ),
    ok("§1.3", "measure uid=0 gid=0 fowner=0 fgroup=0"),
    ok("§1.3", "measure euid<5 egid>7 fowner<1 fgroup>2"),
    bad("§1.3", "measure uid=0 euid=0", "uid", 15),
    bad("§1.3", "measure euid=0 uid=0", "uid", 16),
    bad("§1.3", "measure uid=0 uid=1", "uid", 15),
    bad("§1.3", "measure uid<5 uid>1", "uid", 15),
    bad("§1.3", "measure gid=0 egid=0", "gid", 15),
    bad("§1.3", "measure egid=0 gid<9", "gid", 16),
    bad("§1.5", "measure fowner=0 fowner<3", "fowner", 18),
    bad("§1.5", "measure fgroup>0 fgroup>3", "fgroup", 18),
    bad("§1.3", "measure uid=4294967295", "uid", 9),
    bad("§1.3", "measure euid=4294967295", "uid", 9),
    bad("§1.3", "measure gid=4294967295", "gid", 9),
    bad("§1.3", "measure fowner=4294967295", "fowner", 9),
    bad("§1.3", "measure fgroup<4294967295", "fgroup", 9),
    bad("§1.3", "measure uid=4294967296", "uid", 9),
    bad("§1.3", "measure uid=99999999999999999999999", "uid", 9),
    ok("§1.3", "measure uid=4294967294"),
    ok("§1.3", "measure fowner>4000000000"),
    ok("§1.3", "measure uid=+7", "measure uid=7"),
    ok("§1.3", "measure fgroup<+1000", "measure fgroup<1000"),
    bad("§1.3", "measure uid=-1", "uid", 9),
    bad("§1.3", "measure uid=0x10", "uid", 9),
    bad("§1.3", "measure uid=1a", "uid", 9),
    bad("§1.3", "measure uid=", None, 9),
    bad("§1.3", "measure uid<", None, 9),
    bad("§1.3", "measure uid=+", "uid", 9),
    # §1.3 LSM conditions: each at most once
    *(
        ok("§1.3", f"measure {k}=system_u")
        for k in ("obj_user", "obj_role", "obj_type", "subj_user", "subj_role", "subj_type")
    ),
    ok("§1.3", "measure obj_type=etc_t subj_type=etc_t"),
    bad("§1.5", "measure obj_type=a obj_type=b", "obj_type", 20),
    bad("§1.5", "measure subj_user=a subj_user=a", "subj_user", 21),
    bad("§1.5", "measure subj_role=a obj_role=b subj_role=c", "subj_role", 32),
    # §1.3/§1.6 keyrings= only with KEY_CHECK, label= only with CRITICAL_DATA; no empty items
    ok("§1.3", "measure func=KEY_CHECK keyrings=.ima|.evm"),
    ok("§1.3", "measure func=CRITICAL_DATA label=kernel_info|selinux"),
    bad("§1.6", "measure keyrings=.ima", "keyrings", 9),
    bad("§1.6", "measure func=FILE_CHECK keyrings=.ima", "keyrings", 25),
    bad("§1.6", "measure func=CRITICAL_DATA keyrings=.ima", "keyrings", 28),
    bad("§1.6", "measure label=selinux", "label", 9),
    bad("§1.6", "measure func=KEY_CHECK label=selinux", "label", 24),
    bad("§1.6", "measure func=BPRM_CHECK label=selinux", "label", 25),
    bad("§1.3", "measure func=KEY_CHECK keyrings=.ima||.evm", "empty", 24),
    bad("§1.3", "measure func=KEY_CHECK keyrings=.ima|", "empty", 24),
    bad("§1.3", "measure func=KEY_CHECK keyrings=|.ima", "empty", 24),
    bad("§1.3", "measure func=CRITICAL_DATA label=a||b", "empty", 28),
    bad("§1.3", "measure func=CRITICAL_DATA label=|", "empty", 28),
    bad("§1.5", "measure func=KEY_CHECK keyrings=a keyrings=b", "keyrings", 35),
    bad("§1.5", "measure func=CRITICAL_DATA label=a label=b", "label", 36),
    # §1.5 template=: after measure, by name or format string, once
    ok("§1.5", "measure template=ima-sig"),
    ok("§1.5", "measure func=BPRM_CHECK template=evm-sig"),
    ok("§1.5", "measure template=d-ng|n-ng", "measure template=ima-ng"),
    ok("§1.5", "measure template=d-ng|n-ng|sig", "measure template=ima-sig"),
    ok("§1.5", "measure template=d|n", "measure template=ima"),
    ok("§1.5", "measure template=d-ngv2|n-ng|sig", "measure template=ima-sigv2"),
    bad("§1.5", "template=ima-sig measure", "measure", 1),
    bad("§1.5", "func=FILE_CHECK template=ima-sig measure", "measure", 17),
    bad("§1.5", "appraise template=ima", "measure", 10),
    bad("§1.5", "dont_measure template=ima", "measure", 14),
    bad("§1.5", "measure template=foo", "template", 9),
    bad("§1.5", "measure template=n-ng|d-ng", "template", 9),
    bad("§1.5", "measure template=ima template=ima-ng", "template", 22),
    # §1.5/§1.6 pcr=: 0..63, only with measure
    ok("§1.5", "measure pcr=0"),
    ok("§1.5", "measure pcr=63"),
    ok("§1.5", "measure func=KEY_CHECK pcr=12"),
    bad("§1.5", "measure pcr=64", "pcr", 9),
    bad("§1.5", "measure pcr=-1", "pcr", 9),
    bad("§1.5", "measure pcr=abc", "pcr", 9),
    bad("§1.5", "measure pcr=4294967306", "pcr", 9),
    bad("§1.6", "appraise pcr=11", "pcr", 10),
    bad("§1.6", "dont_measure pcr=11", "pcr", 14),
    bad("§1.6", "audit pcr=11", "pcr", 7),
    bad("§1.6", "hash pcr=11", "pcr", 6),
    # §1.5/§1.6 appraise_type
    ok("§1.5", "appraise appraise_type=imasig"),
    ok("§1.5", "appraise func=BPRM_CHECK appraise_type=imasig"),
    bad("§1.6", "measure appraise_type=imasig", "appraise", 9),
    bad("§1.6", "dont_appraise appraise_type=imasig", "appraise", 15),
    bad("§1.6", "hash appraise_type=imasig", "appraise", 6),
    bad("§1.5", "appraise appraise_type=modsig", "appraise_type", 10),
    bad("§1.5", "appraise appraise_type=IMASIG", "appraise_type", 10),
    bad("§1.5", "appraise appraise_type=sigv2", "appraise_type", 10),
    # imasig|modsig: MODSIG_ALLOWED only for MODULE_CHECK and the kexec hooks
    bad("§1.6", "appraise func=FILE_CHECK appraise_type=imasig|modsig", "modsig", 26),
    bad("§1.6", "appraise appraise_type=imasig|modsig", "modsig", 10),
    bad("§1.6", "appraise func=BPRM_CHECK appraise_type=imasig|modsig", "modsig", 26),
    bad("§1.6", "appraise func=FIRMWARE_CHECK appraise_type=imasig|modsig", "modsig", 30),
    bad("§1.6", "appraise func=POLICY_CHECK appraise_type=imasig|modsig", "modsig", 28),
    ok("§1.6", "appraise func=MODULE_CHECK appraise_type=imasig|modsig"),
    ok("§1.6", "appraise func=KEXEC_KERNEL_CHECK appraise_type=imasig|modsig"),
    ok("§1.6", "appraise func=KEXEC_INITRAMFS_CHECK appraise_type=imasig|modsig"),
    # digest_type=verity and sigv3: order-sensitive
    ok("§1.5", "appraise digest_type=verity appraise_type=sigv3"),
    ok("§1.5", "appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3"),
    ok(
        "§1.5",
        "appraise digest_type=verity fsname=ext4 appraise_type=sigv3 func=BPRM_CHECK",
        "appraise func=BPRM_CHECK fsname=ext4 digest_type=verity appraise_type=sigv3",
    ),
    bad("§1.5", "appraise appraise_type=sigv3 digest_type=verity", "sigv3", 10),
    bad("§1.5", "appraise appraise_type=sigv3", "sigv3", 10),
    bad("§1.5", "appraise digest_type=verity appraise_type=imasig", "verity", 29),
    bad("§1.5", "appraise appraise_type=imasig digest_type=verity", "digest_type", 31),
    bad("§1.6", "appraise digest_type=verity", "sigv3", 10),
    bad("§1.6", "appraise func=BPRM_CHECK digest_type=verity", "sigv3", 26),
    ok("§1.6", "measure digest_type=verity"),
    ok(
        "§1.6",
        "measure func=BPRM_CHECK digest_type=verity template=ima-ngv2",
        "measure func=BPRM_CHECK template=ima-ngv2 digest_type=verity",
    ),
    bad("§1.6", "appraise func=MODULE_CHECK digest_type=verity appraise_type=sigv3", "verity"),
    bad("§1.6", "measure func=KEXEC_KERNEL_CHECK digest_type=verity", "verity", 33),
    bad("§1.5", "measure digest_type=sha256", "verity", 9),
    bad("§1.5", "measure digest_type=", None, 9),
    # §1.5 appraise_algos
    ok("§1.5", "appraise appraise_algos=sha256"),
    ok("§1.5", "appraise appraise_algos=sha256,sha384,sha512"),
    ok("§1.5", "appraise appraise_algos=sha512,sha256", "appraise appraise_algos=sha256,sha512"),
    ok(
        "§1.5",
        "appraise appraise_algos=sha3-256,sm3,sha1",
        "appraise appraise_algos=sha1,sm3,sha3-256",
    ),
    bad("§1.5", "appraise appraise_algos=sha999", "sha999", 10),
    bad("§1.5", "appraise appraise_algos=SHA256", "SHA256", 10),
    bad("§1.5", "appraise appraise_algos=sha256,", None, 10),
    bad("§1.5", "appraise appraise_algos=,sha256", None, 10),
    bad("§1.5", "appraise appraise_algos=sha256,,sha1", None, 10),
    bad("§1.5", "appraise appraise_algos=", None, 10),
    bad("§1.5", "appraise appraise_algos=sha256 appraise_algos=sha1", "appraise_algos", 32),
    bad("§1.6", "measure appraise_algos=sha256", "appraise", 9),
    bad("§1.6", "dont_appraise appraise_algos=sha256", "appraise", 15),
    # §1.5 appraise_flag: accepted, ignored, not printed
    ok("§1.5", "appraise appraise_flag=check_blacklist", "appraise"),
    ok(
        "§1.5",
        "appraise func=MODULE_CHECK appraise_type=imasig|modsig appraise_flag=check_blacklist",
        "appraise func=MODULE_CHECK appraise_type=imasig|modsig",
    ),
    # §1.5 permit_directio
    ok("§1.5", "measure permit_directio"),
    ok("§1.5", "appraise func=BPRM_CHECK permit_directio"),
    ok("§1.5", "dont_appraise fsmagic=0x9fa0 permit_directio"),
    bad("§1.6", "measure func=KEY_CHECK permit_directio", "permit_directio", 24),
    bad("§1.6", "measure func=CRITICAL_DATA permit_directio", "permit_directio", 28),
    bad("§1.6", "measure func=KEXEC_CMDLINE permit_directio", "permit_directio", 28),
    bad("§1.5", "measure permit_directio=1", None, 9),
    # §1.6 SETXATTR_CHECK: appraise + appraise_algos, nothing else
    ok("§1.6", "appraise func=SETXATTR_CHECK appraise_algos=sha256,sha512"),
    bad("§1.6", "appraise func=SETXATTR_CHECK", "appraise_algos"),
    bad("§1.6", "measure func=SETXATTR_CHECK appraise_algos=sha256"),
    bad("§1.6", "dont_appraise func=SETXATTR_CHECK"),
    bad("§1.6", "appraise func=SETXATTR_CHECK appraise_algos=sha256 fsmagic=0x9fa0", "fsmagic"),
    bad("§1.6", "appraise func=SETXATTR_CHECK appraise_algos=sha256 uid=0", "uid"),
    bad("§1.6", "appraise func=SETXATTR_CHECK appraise_algos=sha256 mask=MAY_READ", "mask"),
    bad("§1.6", "appraise func=SETXATTR_CHECK appraise_algos=sha256 appraise_type=imasig"),
    bad("§1.6", "appraise func=SETXATTR_CHECK appraise_algos=sha256 permit_directio"),
    # §1.6 KEXEC_CMDLINE: measure/dont_measure; file conditions but no mask
    ok("§1.6", "measure func=KEXEC_CMDLINE"),
    ok("§1.6", "dont_measure func=KEXEC_CMDLINE fsmagic=0x9fa0"),
    ok("§1.6", "measure func=KEXEC_CMDLINE fsname=ext4 pcr=12 euid=0 egid=0 fowner=0 fgroup=0"),
    ok("§1.6", "measure func=KEXEC_CMDLINE fsuuid=0123abcd-4567-89ab-cdef-0123456789ab"),
    bad("§1.6", "appraise func=KEXEC_CMDLINE", "measure"),
    bad("§1.6", "audit func=KEXEC_CMDLINE", "measure"),
    bad("§1.6", "hash func=KEXEC_CMDLINE", "measure"),
    bad("§1.6", "measure func=KEXEC_CMDLINE mask=MAY_READ", "mask", 28),
    # §1.6 KEY_CHECK / CRITICAL_DATA: measure-only, FUNC UID GID PCR + list; no LSM
    ok(
        "§1.6",
        "measure func=KEY_CHECK uid=0 gid=0 pcr=12 keyrings=.ima template=ima-buf",
        "measure func=KEY_CHECK keyrings=.ima pcr=12 uid=0 gid=0 template=ima-buf",
    ),
    ok("§1.6", "dont_measure func=KEY_CHECK keyrings=.builtin_trusted_keys"),
    ok(
        "§1.6",
        "measure func=CRITICAL_DATA uid<1000 gid>5 label=selinux pcr=11",
        "measure func=CRITICAL_DATA label=selinux pcr=11 uid<1000 gid>5",
    ),
    bad("§1.6", "appraise func=KEY_CHECK", "measure"),
    bad("§1.6", "audit func=KEY_CHECK", "measure"),
    bad("§1.6", "dont_hash func=KEY_CHECK", "measure"),
    bad("§1.6", "hash func=CRITICAL_DATA", "measure"),
    bad("§1.6", "dont_appraise func=CRITICAL_DATA", "measure"),
    bad("§1.6", "measure func=KEY_CHECK euid=0", "euid", 24),
    bad("§1.6", "measure func=KEY_CHECK egid=0", "egid", 24),
    bad("§1.6", "measure func=KEY_CHECK fowner=0", "fowner", 24),
    bad("§1.6", "measure func=KEY_CHECK fgroup=0", "fgroup", 24),
    bad("§1.6", "measure func=KEY_CHECK fsmagic=0x9fa0", "fsmagic", 24),
    bad("§1.6", "measure func=KEY_CHECK fsname=ext4", "fsname", 24),
    bad("§1.6", "measure func=KEY_CHECK mask=MAY_READ", "mask", 24),
    bad("§1.6", "measure func=KEY_CHECK obj_type=etc_t", "LSM", 24),
    bad("§1.6", "measure func=CRITICAL_DATA subj_user=system_u", "LSM", 28),
    bad("§1.6", "measure func=CRITICAL_DATA fsuuid=0123abcd-4567-89ab-cdef-0123456789ab"),
    # §1.1 lexical: comments, whitespace, tabs, CR
    ok("§1.1", "measure # a trailing comment", "measure"),
    ok("§1.1", "measure func=BPRM_CHECK #func=FILE_CHECK appraise", "measure func=BPRM_CHECK"),
    ok("§1.1", "measure\t#x", "measure"),
    ok("§1.1", "   measure func=FILE_CHECK", "measure func=FILE_CHECK"),
    ok("§1.1", "\t \tmeasure func=FILE_CHECK", "measure func=FILE_CHECK"),
    ok(
        "§1.1", "measure\tfunc=FILE_CHECK\t\tmask=MAY_READ", "measure func=FILE_CHECK mask=MAY_READ"
    ),
    ok("§1.1", "measure   func=FILE_CHECK  ", "measure func=FILE_CHECK"),
    ok("§1.1", "# comment\n\n   \n\t\nmeasure\n# end", "measure"),
    bad("§1.1", "measure#x"),
    bad("§1.1", "measure func=FILE_CHECK\r", "func", 9),
    bad("§1.1", "measure\r\nappraise\r\n"),
    bad("§1.1", "measure func=BOGUS", "func", 9),
    bad("§1.1", "  measure  func=BOGUS", "func", 12),
    bad("§1.1", "\tmeasure\tfunc=BOGUS", "func", 10),
    bad("§1.1", "measure frobnicate", None, 9),
    bad("§1.1", "measure fsname", None, 9),
    bad_file("§1.1", "", "no rules"),
    bad_file("§1.1", "\n\n  \n", "no rules"),
    bad_file("§1.1", "# only a comment\n#@ version 3\n", "no rules"),
]


def _sec(cite: str) -> str:
    """The citation as shown in test ids ("sec1.6": pytest escapes the "§" sign)."""
    return "sec" + cite.removeprefix("§")


def _id(row: Parse) -> str:
    verdict = "ok" if row.canon is not None else "rejected"
    return f"{_sec(row.cite)} {verdict}: {row.text!r}"


@pytest.mark.parametrize("row", PARSE_ROWS, ids=_id)
def test_parse_conformance(row: Parse) -> None:
    if row.canon is not None:
        policy = parse_policy(row.text, mode=row.mode)  # type: ignore[arg-type]
        assert [r.canonical() for r in policy.rules] == row.canon.split("\n")
        # the canonical form is itself accepted and prints the same (parse -> print
        # -> parse identity is checked in test_parser.py)
        again = parse_policy(policy.text(), mode=row.mode)  # type: ignore[arg-type]
        assert again.text() == policy.text()
        return
    with pytest.raises(PolicyError) as exc:
        parse_policy(row.text, mode=row.mode, source="t.policy")  # type: ignore[arg-type]
    err = exc.value
    assert err.problems, "a rejected policy names at least one problem"
    source, line, col, reason = err.problems[0]
    assert source == "t.policy"
    assert col >= 1
    if row.why is not None:
        assert row.why.lower() in reason.lower(), reason
    if row.col is not None:
        assert col == row.col, reason
    first = str(err).split("\n")[0]
    if row.line is None:  # a whole-file problem: FILE: reason
        assert first.startswith(f"t.policy: {reason}"), first
    else:  # FILE:LINE:COL: reason, the line known from the row itself
        assert line == row.line, reason
        assert first == f"t.policy:{row.line}:{col}: {reason}"


def test_every_kernel_func_has_a_row() -> None:
    funcs = {r.text.split("func=")[1].split()[0] for r in FUNC_ROWS}
    assert funcs == set(POLICY_FUNCS)


# --------------------------------------------------------------------------------------
# All or nothing (§1.1)
# --------------------------------------------------------------------------------------


def test_one_bad_line_loads_nothing_and_every_bad_line_is_reported() -> None:
    text = (
        "measure func=BPRM_CHECK\n"  # 1 ok
        "measure func=BOGUS\n"  # 2 bad at col 9
        "# a comment\n"  # 3
        "appraise fowner=0\n"  # 4 ok
        "  dont_measure pcr=3\n"  # 5 bad at col 16
        "measure uid=0 euid=0\n"  # 6 bad at col 15
        "hash\n"  # 7 ok
    )
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source="/etc/ima/policy")
    problems = exc.value.problems
    assert [(s, line, col) for s, line, col, _ in problems] == [
        ("/etc/ima/policy", 2, 9),
        ("/etc/ima/policy", 5, 16),
        ("/etc/ima/policy", 6, 15),
    ]
    lines = str(exc.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("/etc/ima/policy:2:9: ")
    assert lines[1].startswith("/etc/ima/policy:5:16: ")
    assert lines[2].startswith("/etc/ima/policy:6:15: ")


def test_crlf_policy_is_rejected_and_the_reason_says_so() -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy("measure func=BPRM_CHECK\r\ndont_measure fsmagic=0x9fa0\r\n")
    assert [p[1] for p in exc.value.problems] == [1, 2]
    assert "carriage return" in exc.value.problems[0][3] or "CR" in exc.value.problems[0][3]


def test_a_bare_cr_line_is_not_a_blank_line() -> None:
    # The kernel skips only spaces and tabs; "\r" is then an unknown token.
    with pytest.raises(PolicyError) as exc:
        parse_policy("measure\n\r\nappraise\n")
    assert [p[1] for p in exc.value.problems] == [2]


# --------------------------------------------------------------------------------------
# Part B: policy + request -> decision (§2.2, §2.3, §1.7)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decide:
    cite: str
    what: str
    policy: str
    request: Request
    actions: frozenset[str]
    expect: tuple[tuple[str, Any], ...]


def row(
    cite: str, what: str, policy: str, request: Request, actions: str = "", **expect: Any
) -> Decide:
    kinds = frozenset(a for a in actions.split(",") if a)
    return Decide(cite, what, policy, request, kinds, tuple(expect.items()))


PROC, SYSFS, TMPFS, RAMFS, EXT4 = 0x9FA0, 0x62656572, 0x01021994, 0x858458F6, 0xEF53
DONT_MEASURE_MAGICS = {
    "PROC_SUPER": 0x9FA0,
    "SYSFS": 0x62656572,
    "DEBUGFS": 0x64626720,
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
APPRAISE_TCB_MAGICS = {**DONT_MEASURE_MAGICS, "TMPFS": TMPFS, "RAMFS": RAMFS}
UUID = "0123abcd-4567-89ab-cdef-0123456789ab"

DECIDE_ROWS: list[Decide] = [
    # §2.3 first match per kind
    row(
        "§2.3",
        "first matching measure rule decides",
        "measure func=FILE_CHECK pcr=11\nmeasure func=FILE_CHECK pcr=12",
        req("FILE_CHECK", "MAY_READ"),
        "measure",
        pcr=11,
        measure_line=1,
    ),
    row(
        "§2.3",
        "dont_measure first stops a later measure",
        "dont_measure fsmagic=0x9fa0\nmeasure",
        req("FILE_CHECK", "MAY_READ", fsmagic=PROC),
        "",
        measure_line=1,
    ),
    row(
        "§2.3",
        "dont_measure that does not match leaves measure",
        "dont_measure fsmagic=0x9fa0\nmeasure",
        req("FILE_CHECK", "MAY_READ", fsmagic=EXT4),
        "measure",
        measure_line=2,
    ),
    row(
        "§2.3",
        "measure before dont_measure wins",
        "measure\ndont_measure fsmagic=0x9fa0",
        req("FILE_CHECK", "MAY_READ", fsmagic=PROC),
        "measure",
        measure_line=1,
    ),
    row(
        "§2.3",
        "dont_measure does not affect other kinds",
        "dont_measure\nappraise\nmeasure\naudit",
        req("BPRM_CHECK", "MAY_EXEC"),
        "appraise,audit",
    ),
    row(
        "§2.3",
        "dont_appraise stops appraise, not measure",
        "dont_appraise fowner=0\nappraise\nmeasure",
        req("FILE_CHECK", "MAY_READ", fowner=0),
        "measure",
        appraise_line=1,
    ),
    row(
        "§2.3",
        "appraise before dont_appraise wins",
        "appraise fowner=0\ndont_appraise\nmeasure",
        req("FILE_CHECK", "MAY_READ", fowner=0),
        "appraise,measure",
    ),
    row(
        "§2.3",
        "dont_hash stops hash",
        "dont_hash fsname=tmpfs\nhash",
        req("FILE_CHECK", "MAY_WRITE", fsname="tmpfs"),
        "",
    ),
    row(
        "§2.3",
        "dont_hash that does not match leaves hash",
        "dont_hash fsname=tmpfs\nhash",
        req("FILE_CHECK", "MAY_WRITE", fsname="ext4"),
        "hash",
        hash_line=2,
    ),
    row(
        "§2.3",
        "audit has no dont: the first audit rule decides",
        "audit func=BPRM_CHECK\naudit",
        req("BPRM_CHECK", "MAY_EXEC"),
        "audit",
        audit_line=1,
    ),
    row(
        "§2.3",
        "audit without func matches every file hook",
        "audit func=BPRM_CHECK\naudit",
        req("MMAP_CHECK", "MAY_EXEC"),
        "audit",
        audit_line=2,
    ),
    row(
        "§2.3",
        "appraise clears an earlier hash",
        "hash\nappraise",
        req("FILE_CHECK", "MAY_READ"),
        "appraise",
    ),
    row(
        "§2.3",
        "a later hash sets it again after appraise",
        "appraise\nhash",
        req("FILE_CHECK", "MAY_READ"),
        "appraise,hash",
    ),
    row(
        "§2.3",
        "hash stays when the appraise rule does not match",
        "hash\nappraise fowner=0",
        req("FILE_CHECK", "MAY_READ", fowner=1000),
        "hash",
    ),
    row(
        "§2.3",
        "dont_appraise does not clear hash",
        "hash\ndont_appraise\nappraise",
        req("FILE_CHECK", "MAY_READ"),
        "hash",
    ),
    row(
        "§2.3",
        "pcr and template from the deciding measure rule",
        "dont_measure fsmagic=0x9fa0\nmeasure pcr=11 template=ima-sig\nmeasure pcr=12",
        req("FILE_CHECK", "MAY_READ", fsmagic=EXT4),
        "measure",
        pcr=11,
        template="ima-sig",
    ),
    row(
        "§2.3",
        "a dont_measure decision leaves the default pcr and template",
        "dont_measure fsmagic=0x9fa0\nmeasure pcr=11 template=ima-sig",
        req("FILE_CHECK", "MAY_READ", fsmagic=PROC),
        "",
        pcr=10,
        template=None,
    ),
    row(
        "§2.3",
        "default pcr is 10 and template unset",
        "measure",
        req("BPRM_CHECK", "MAY_EXEC"),
        "measure",
        pcr=10,
        template=None,
    ),
    row(
        "§2.3",
        "pcr by hook",
        "measure func=BPRM_CHECK pcr=12\nmeasure pcr=13 template=ima-ng",
        req("FILE_CHECK", "MAY_READ"),
        "measure",
        pcr=13,
        template="ima-ng",
    ),
    row(
        "§2.3",
        "flags of every matching rule are OR'd",
        "appraise func=BPRM_CHECK appraise_type=imasig\nmeasure permit_directio",
        req("BPRM_CHECK", "MAY_EXEC"),
        "appraise,measure",
        appraise_type="imasig",
        digsig_required=True,
        check_blacklist=True,
        permit_directio=True,
    ),
    row(
        "§2.3",
        "permit_directio from a dont_ rule",
        "dont_measure fsmagic=0x9fa0 permit_directio\nmeasure",
        req("FILE_CHECK", "MAY_READ", fsmagic=PROC),
        "",
        permit_directio=True,
    ),
    row(
        "§2.3",
        "a rule skipped because its kind is decided adds no flags",
        "measure\nmeasure permit_directio",
        req("FILE_CHECK", "MAY_READ"),
        "measure",
        permit_directio=False,
    ),
    row(
        "§2.3",
        "a non-matching rule adds no flags",
        "appraise fowner=0 appraise_type=imasig\nmeasure",
        req("FILE_CHECK", "MAY_READ", fowner=1),
        "measure",
        appraise_type=None,
        digsig_required=False,
    ),
    row(
        "§2.3",
        "imasig|modsig from a MODULE_CHECK rule",
        "appraise func=MODULE_CHECK appraise_type=imasig|modsig",
        req("MODULE_CHECK", "MAY_READ"),
        "appraise",
        appraise_type="imasig|modsig",
        modsig_allowed=True,
        check_blacklist=True,
    ),
    row(
        "§2.3",
        "sigv3 + verity",
        "appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3",
        req("BPRM_CHECK", "MAY_EXEC"),
        "appraise",
        appraise_type="sigv3",
        digest_type="verity",
        verity_required=True,
    ),
    row(
        "§2.3",
        "verity flag from a measure rule",
        "measure func=BPRM_CHECK digest_type=verity",
        req("BPRM_CHECK", "MAY_EXEC"),
        "measure",
        digest_type="verity",
        appraise_type=None,
    ),
    row(
        "§2.3",
        "appraise_algos from the deciding appraise rule",
        "appraise func=BPRM_CHECK appraise_algos=sha512,sha256\nappraise appraise_algos=sha1",
        req("BPRM_CHECK", "MAY_EXEC"),
        "appraise",
        appraise_algos={"sha256", "sha512"},
    ),
    row(
        "§2.3",
        "no appraise_algos when dont_appraise decides",
        "dont_appraise fowner=1\nappraise appraise_algos=sha256",
        req("FILE_CHECK", "MAY_READ", fowner=1),
        "",
        appraise_algos=None,
    ),
    # §2.2 the match predicate
    row(
        "§2.2",
        "mask= is exact: equal",
        "measure func=FILE_CHECK mask=MAY_READ",
        req("FILE_CHECK", "MAY_READ"),
        "measure",
    ),
    row(
        "§2.2",
        "mask= is exact: a superset does not match",
        "measure func=FILE_CHECK mask=MAY_READ",
        req("FILE_CHECK", "MAY_READ|MAY_WRITE"),
        "",
    ),
    row(
        "§2.2",
        "mask=^ contains: superset matches",
        "measure func=FILE_CHECK mask=^MAY_READ",
        req("FILE_CHECK", "MAY_READ|MAY_WRITE"),
        "measure",
    ),
    row(
        "§2.2",
        "mask=^ contains: bit missing",
        "measure func=FILE_CHECK mask=^MAY_READ",
        req("FILE_CHECK", "MAY_WRITE|MAY_APPEND"),
        "",
    ),
    row(
        "§2.2",
        "mask=^ with an empty request mask",
        "measure mask=^MAY_EXEC",
        req("KEXEC_CMDLINE"),
        "",
    ),
    row(
        "§2.2",
        "func differs",
        "measure func=BPRM_CHECK",
        req("FILE_CHECK", "MAY_EXEC"),
        "",
    ),
    row(
        "§2.2",
        "MMAP_CHECK_REQPROT is its own hook",
        "measure func=MMAP_CHECK",
        req("MMAP_CHECK_REQPROT", "MAY_EXEC"),
        "",
    ),
    row(
        "§2.2",
        "PATH_CHECK alias matches FILE_CHECK requests",
        "measure func=PATH_CHECK",
        req("FILE_CHECK", "MAY_READ"),
        "measure",
    ),
    row(
        "§2.2",
        "FILE_MMAP alias matches MMAP_CHECK requests",
        "measure func=FILE_MMAP",
        req("MMAP_CHECK", "MAY_EXEC"),
        "measure",
    ),
    *(
        row(
            "§2.2",
            f"a rule without func matches {hook}",
            "measure uid=0",
            req(hook, uid=0),
            "measure",
        )
        for hook in (
            "FILE_CHECK",
            "MMAP_CHECK",
            "MMAP_CHECK_REQPROT",
            "BPRM_CHECK",
            "CREDS_CHECK",
            "MODULE_CHECK",
            "FIRMWARE_CHECK",
            "KEXEC_KERNEL_CHECK",
            "KEXEC_INITRAMFS_CHECK",
            "POLICY_CHECK",
            "KEXEC_CMDLINE",
        )
    ),
    row(
        "§2.2",
        "KEXEC_CMDLINE: file conditions checked against the kernel inode",
        "dont_measure fsmagic=0x9fa0\nmeasure func=KEXEC_CMDLINE",
        req("KEXEC_CMDLINE", fsmagic=PROC),
        "",
    ),
    row(
        "§2.2",
        "POST_SETATTR ignores func and mask",
        "appraise func=BPRM_CHECK mask=MAY_EXEC",
        req("POST_SETATTR"),
        "appraise",
    ),
    row(
        "§2.2",
        "POST_SETATTR ignores exact mask mismatch",
        "appraise func=FILE_CHECK mask=MAY_WRITE",
        req("POST_SETATTR", "MAY_READ"),
        "appraise",
    ),
    row(
        "§2.2",
        "POST_SETATTR still checks the other conditions",
        "appraise func=BPRM_CHECK fowner=0",
        req("POST_SETATTR", fowner=1000),
        "",
    ),
    row(
        "§2.2",
        "POST_SETATTR honours a dont_appraise of another func",
        "dont_appraise func=MODULE_CHECK fsmagic=0x9fa0\nappraise",
        req("POST_SETATTR", fsmagic=PROC),
        "",
    ),
    row(
        "§2.2",
        "fsmagic equal",
        "measure fsmagic=0xef53",
        req("FILE_CHECK", fsmagic=EXT4),
        "measure",
    ),
    row("§2.2", "fsmagic differs", "measure fsmagic=0xef53", req("FILE_CHECK", fsmagic=PROC), ""),
    row("§2.2", "fsname equal", "measure fsname=ext4", req("FILE_CHECK", fsname="ext4"), "measure"),
    row("§2.2", "fsname differs", "measure fsname=ext4", req("FILE_CHECK", fsname="ext3"), ""),
    row(
        "§2.2", "fsuuid equal", f"measure fsuuid={UUID}", req("FILE_CHECK", fsuuid=UUID), "measure"
    ),
    row(
        "§2.2",
        "fsuuid equal whatever the spelling case",
        f"measure fsuuid={UUID.upper()}",
        req("FILE_CHECK", fsuuid=UUID.upper()),
        "measure",
    ),
    row(
        "§2.2",
        "fsuuid differs",
        f"measure fsuuid={UUID}",
        req("FILE_CHECK", fsuuid=UUID[:-1] + "c"),
        "",
    ),
    row("§2.2", "uid= equal", "measure uid=0", req("FILE_CHECK", uid=0), "measure"),
    row("§2.2", "uid= differs", "measure uid=0", req("FILE_CHECK", uid=1), ""),
    row("§2.2", "uid< below", "measure uid<1000", req("FILE_CHECK", uid=999), "measure"),
    row("§2.2", "uid< is strict", "measure uid<1000", req("FILE_CHECK", uid=1000), ""),
    row("§2.2", "uid> above", "measure uid>1000", req("FILE_CHECK", uid=1001), "measure"),
    row("§2.2", "uid> is strict", "measure uid>1000", req("FILE_CHECK", uid=1000), ""),
    row(
        "§2.2",
        "uid= looks at the real uid, not euid",
        "measure uid=0",
        req("FILE_CHECK", uid=1000, euid=0, cap_setuid=True),
        "",
    ),
    row(
        "§2.2",
        "euid without CAP_SETUID: euid only (uid would match)",
        "measure euid=0",
        req("FILE_CHECK", uid=0, euid=1000, suid=0),
        "",
    ),
    row(
        "§2.2",
        "euid without CAP_SETUID: euid matches",
        "measure euid=0",
        req("FILE_CHECK", uid=1000, euid=0, suid=1000),
        "measure",
    ),
    row(
        "§2.2",
        "euid with CAP_SETUID: uid satisfies",
        "measure euid=0",
        req("FILE_CHECK", uid=0, euid=1000, suid=1000, cap_setuid=True),
        "measure",
    ),
    row(
        "§2.2",
        "euid with CAP_SETUID: suid satisfies",
        "measure euid=0",
        req("FILE_CHECK", uid=1000, euid=1000, suid=0, cap_setuid=True),
        "measure",
    ),
    row(
        "§2.2",
        "euid with CAP_SETUID: none satisfies",
        "measure euid=0",
        req("FILE_CHECK", uid=5, euid=6, suid=7, cap_setuid=True),
        "",
    ),
    row(
        "§2.2",
        "euid< with CAP_SETUID over suid",
        "measure euid<100",
        req("FILE_CHECK", uid=1000, euid=1000, suid=50, cap_setuid=True),
        "measure",
    ),
    row(
        "§2.2",
        "CAP_SETGID does not widen euid",
        "measure euid=0",
        req("FILE_CHECK", uid=0, euid=1000, suid=1000, cap_setgid=True),
        "",
    ),
    row("§2.2", "gid= equal", "measure gid=100", req("FILE_CHECK", gid=100), "measure"),
    row("§2.2", "gid> strict", "measure gid>100", req("FILE_CHECK", gid=100), ""),
    row(
        "§2.2",
        "egid without CAP_SETGID: egid only",
        "measure egid=0",
        req("FILE_CHECK", gid=0, egid=5, sgid=0),
        "",
    ),
    row(
        "§2.2",
        "egid without CAP_SETGID: egid matches",
        "measure egid=0",
        req("FILE_CHECK", gid=5, egid=0),
        "measure",
    ),
    row(
        "§2.2",
        "egid with CAP_SETGID: gid satisfies",
        "measure egid=0",
        req("FILE_CHECK", gid=0, egid=5, sgid=5, cap_setgid=True),
        "measure",
    ),
    row(
        "§2.2",
        "egid with CAP_SETGID: sgid satisfies",
        "measure egid>10",
        req("FILE_CHECK", gid=1, egid=1, sgid=11, cap_setgid=True),
        "measure",
    ),
    row(
        "§2.2",
        "CAP_SETUID does not widen egid",
        "measure egid=0",
        req("FILE_CHECK", gid=0, egid=5, sgid=5, cap_setuid=True),
        "",
    ),
    row("§2.2", "fowner= equal", "measure fowner=0", req("FILE_CHECK", fowner=0), "measure"),
    row("§2.2", "fowner< ", "measure fowner<1000", req("FILE_CHECK", fowner=0), "measure"),
    row("§2.2", "fowner> strict", "measure fowner>0", req("FILE_CHECK", fowner=0), ""),
    row("§2.2", "fgroup= equal", "measure fgroup=42", req("FILE_CHECK", fgroup=42), "measure"),
    row("§2.2", "fgroup> strict", "measure fgroup>10", req("FILE_CHECK", fgroup=10), ""),
    row("§2.2", "fgroup< ", "measure fgroup<10", req("FILE_CHECK", fgroup=9), "measure"),
    row(
        "§2.2",
        "obj_type equal",
        "measure obj_type=etc_t",
        req("FILE_CHECK", obj_type="etc_t"),
        "measure",
    ),
    row(
        "§2.2",
        "obj_type differs",
        "measure obj_type=etc_t",
        req("FILE_CHECK", obj_type="shadow_t"),
        "",
    ),
    row(
        "§2.2",
        "obj_user is the object's label, not the subject's",
        "measure obj_user=system_u",
        req("FILE_CHECK", subj_user="system_u"),
        "",
    ),
    row(
        "§2.2",
        "subj_role is the task's label",
        "measure subj_role=sysadm_r",
        req("FILE_CHECK", subj_role="sysadm_r", obj_role="object_r"),
        "measure",
    ),
    row(
        "§2.2",
        "all LSM conditions must hold",
        "measure obj_user=u obj_role=r obj_type=t subj_user=su subj_role=sr subj_type=st",
        req(
            "FILE_CHECK",
            obj_user="u",
            obj_role="r",
            obj_type="t",
            subj_user="su",
            subj_role="sr",
            subj_type="st",
        ),
        "measure",
    ),
    row(
        "§2.2",
        "one LSM condition failing rejects the rule",
        "measure obj_user=u obj_role=r obj_type=t subj_user=su subj_role=sr subj_type=st",
        req(
            "FILE_CHECK",
            obj_user="u",
            obj_role="r",
            obj_type="t",
            subj_user="su",
            subj_role="sr",
            subj_type="other",
        ),
        "",
    ),
    # unknown attributes (None) never satisfy a condition
    *(
        row(
            "§2.2",
            f"unknown attribute never satisfies {cond}",
            f"measure {cond}",
            req("FILE_CHECK"),
            "",
        )
        for cond in (
            "fsmagic=0x0",
            "fsname=ext4",
            f"fsuuid={UUID}",
            "uid=0",
            "uid<1000",
            "uid>0",
            "euid=0",
            "euid<5",
            "gid=0",
            "egid>1",
            "fowner=0",
            "fowner<1",
            "fgroup>0",
            "obj_type=etc_t",
            "subj_user=root",
        )
    ),
    row(
        "§2.2",
        "unknown euid with CAP_SETUID: only known ids count",
        "measure euid=0",
        req("FILE_CHECK", cap_setuid=True),
        "",
    ),
    # data hooks: KEY_CHECK and CRITICAL_DATA (§2.2: the rule's func must be the hook)
    row(
        "§2.2",
        "KEY_CHECK: keyring in the list",
        "measure func=KEY_CHECK keyrings=.ima|.evm",
        req("KEY_CHECK", data=".evm"),
        "measure",
    ),
    row(
        "§2.2",
        "KEY_CHECK: keyring not in the list",
        "measure func=KEY_CHECK keyrings=.ima|.evm",
        req("KEY_CHECK", data=".builtin_trusted_keys"),
        "",
    ),
    row(
        "§2.2",
        "KEY_CHECK: no keyring name against a list",
        "measure func=KEY_CHECK keyrings=.ima",
        req("KEY_CHECK"),
        "",
    ),
    row(
        "§2.2",
        "KEY_CHECK: keyrings absent matches all",
        "measure func=KEY_CHECK",
        req("KEY_CHECK", data=".anything"),
        "measure",
    ),
    row(
        "§2.2",
        "KEY_CHECK: keyrings absent matches even without a name",
        "measure func=KEY_CHECK",
        req("KEY_CHECK"),
        "measure",
    ),
    row(
        "§2.2",
        "KEY_CHECK: a rule without func never matches",
        "measure",
        req("KEY_CHECK", data=".ima", uid=0),
        "",
    ),
    row(
        "§2.2",
        "KEY_CHECK: a func-less dont_measure does not block it",
        "dont_measure\nmeasure func=KEY_CHECK",
        req("KEY_CHECK", data=".ima"),
        "measure",
        measure_line=2,
    ),
    row(
        "§2.2",
        "KEY_CHECK: a CRITICAL_DATA rule does not match",
        "measure func=CRITICAL_DATA",
        req("KEY_CHECK", data=".ima"),
        "",
    ),
    row(
        "§2.2",
        "KEY_CHECK: uid checked",
        "measure func=KEY_CHECK uid=0",
        req("KEY_CHECK", data=".ima", uid=1000),
        "",
    ),
    row(
        "§2.2",
        "KEY_CHECK: uid matches",
        "measure func=KEY_CHECK uid<1000",
        req("KEY_CHECK", data=".ima", uid=0),
        "measure",
    ),
    row(
        "§2.2",
        "KEY_CHECK: gid is accepted but not checked (only uid is)",
        "measure func=KEY_CHECK gid=5",
        req("KEY_CHECK", data=".ima", gid=0),
        "measure",
    ),
    row(
        "§2.2",
        "KEY_CHECK: dont_measure by keyring",
        "dont_measure func=KEY_CHECK keyrings=.ima\nmeasure func=KEY_CHECK pcr=12",
        req("KEY_CHECK", data=".ima"),
        "",
    ),
    row(
        "§2.2",
        "KEY_CHECK: other keyrings still measured, on the rule's pcr",
        "dont_measure func=KEY_CHECK keyrings=.ima\nmeasure func=KEY_CHECK pcr=12",
        req("KEY_CHECK", data=".evm"),
        "measure",
        pcr=12,
    ),
    row(
        "§2.2",
        "CRITICAL_DATA: label in the list",
        "measure func=CRITICAL_DATA label=selinux|kernel_info",
        req("CRITICAL_DATA", data="selinux"),
        "measure",
    ),
    row(
        "§2.2",
        "CRITICAL_DATA: label not in the list",
        "measure func=CRITICAL_DATA label=selinux",
        req("CRITICAL_DATA", data="kernel_version"),
        "",
    ),
    row(
        "§2.2",
        "CRITICAL_DATA: a rule without func never matches",
        "measure",
        req("CRITICAL_DATA", data="selinux"),
        "",
    ),
    row(
        "§2.2",
        "CRITICAL_DATA: a KEY_CHECK rule does not match",
        "measure func=KEY_CHECK",
        req("CRITICAL_DATA", data="selinux"),
        "",
    ),
    row(
        "§2.2",
        "CRITICAL_DATA: uid checked",
        "measure func=CRITICAL_DATA uid=0",
        req("CRITICAL_DATA", data="selinux", uid=1),
        "",
    ),
    # §1.7 built-in policies
    row(
        "§1.7",
        "tcb: exec measured",
        "builtin:tcb",
        req("BPRM_CHECK", "MAY_EXEC", fsmagic=EXT4),
        "measure",
        measure_line=15,
    ),
    row(
        "§1.7",
        "tcb: mmap exec measured",
        "builtin:tcb",
        req("MMAP_CHECK", "MAY_EXEC", fsmagic=EXT4),
        "measure",
        measure_line=14,
    ),
    row(
        "§1.7",
        "tcb: procfs exec not measured",
        "builtin:tcb",
        req("BPRM_CHECK", "MAY_EXEC", fsmagic=PROC),
        "",
        measure_line=1,
    ),
    *(
        row(
            "§1.7",
            f"tcb: {name} excluded",
            "builtin:tcb",
            req("BPRM_CHECK", "MAY_EXEC", fsmagic=magic),
            "",
        )
        for name, magic in DONT_MEASURE_MAGICS.items()
    ),
    row(
        "§1.7",
        "tcb: tmpfs excluded for FILE_CHECK only",
        "builtin:tcb",
        req("FILE_CHECK", "MAY_READ", uid=0, fsmagic=TMPFS),
        "",
        measure_line=4,
    ),
    row(
        "§1.7",
        "tcb: tmpfs executables still measured",
        "builtin:tcb",
        req("BPRM_CHECK", "MAY_EXEC", fsmagic=TMPFS),
        "measure",
    ),
    row(
        "§1.7",
        "tcb: tmpfs mmap still measured",
        "builtin:tcb",
        req("MMAP_CHECK", "MAY_EXEC", fsmagic=TMPFS),
        "measure",
    ),
    row(
        "§1.7",
        "tcb: ramfs is not in the dont_measure set",
        "builtin:tcb",
        req("BPRM_CHECK", "MAY_EXEC", fsmagic=RAMFS),
        "measure",
    ),
    row(
        "§1.7",
        "tcb: root read, mask contains MAY_READ",
        "builtin:tcb",
        req("FILE_CHECK", "MAY_READ|MAY_WRITE", uid=0, fsmagic=EXT4),
        "measure",
    ),
    row(
        "§1.7",
        "tcb: euid 0 read (euid rule first)",
        "builtin:tcb",
        req("FILE_CHECK", "MAY_READ", uid=1000, euid=0, fsmagic=EXT4),
        "measure",
        measure_line=16,
    ),
    row(
        "§1.7",
        "tcb: uid 0 with euid 1000 read (uid rule)",
        "builtin:tcb",
        req("FILE_CHECK", "MAY_READ", uid=0, euid=1000, fsmagic=EXT4),
        "measure",
        measure_line=17,
    ),
    row(
        "§1.7",
        "tcb: user read not measured",
        "builtin:tcb",
        req("FILE_CHECK", "MAY_READ", uid=1000, fsmagic=EXT4),
        "",
    ),
    row(
        "§1.7",
        "tcb: root write-only open not measured",
        "builtin:tcb",
        req("FILE_CHECK", "MAY_WRITE", uid=0, fsmagic=EXT4),
        "",
    ),
    row("§1.7", "tcb: module", "builtin:tcb", req("MODULE_CHECK", "MAY_READ"), "measure"),
    row("§1.7", "tcb: firmware", "builtin:tcb", req("FIRMWARE_CHECK", "MAY_READ"), "measure"),
    row("§1.7", "tcb: policy", "builtin:tcb", req("POLICY_CHECK", "MAY_READ"), "measure"),
    row("§1.7", "tcb: kexec kernel not", "builtin:tcb", req("KEXEC_KERNEL_CHECK", "MAY_READ"), ""),
    row("§1.7", "tcb: keys not", "builtin:tcb", req("KEY_CHECK", data=".ima", uid=0), ""),
    row(
        "§1.7",
        "tcb: no appraisal",
        "builtin:tcb",
        req("BPRM_CHECK", "MAY_EXEC", fowner=0),
        "measure",
    ),
    row(
        "§1.7",
        "ima_tcb: root read with exact MAY_READ",
        "builtin:ima_tcb",
        req("FILE_CHECK", "MAY_READ", uid=0, fsmagic=EXT4),
        "measure",
        measure_line=16,
    ),
    row(
        "§1.7",
        "ima_tcb: mask is exact (read+write not measured)",
        "builtin:ima_tcb",
        req("FILE_CHECK", "MAY_READ|MAY_WRITE", uid=0, fsmagic=EXT4),
        "",
    ),
    row(
        "§1.7",
        "ima_tcb: no euid rule",
        "builtin:ima_tcb",
        req("FILE_CHECK", "MAY_READ", uid=1000, euid=0, fsmagic=EXT4),
        "",
    ),
    row(
        "§1.7",
        "ima_tcb: no POLICY_CHECK rule",
        "builtin:ima_tcb",
        req("POLICY_CHECK", "MAY_READ"),
        "",
    ),
    row("§1.7", "ima_tcb: module", "builtin:ima_tcb", req("MODULE_CHECK", "MAY_READ"), "measure"),
    row(
        "§1.7",
        "tcb first wins over ima_tcb",
        "builtin:tcb|ima_tcb",
        req("POLICY_CHECK", "MAY_READ"),
        "measure",
    ),
    row(
        "§1.7",
        "ima_tcb first wins over tcb",
        "builtin:ima_tcb|tcb",
        req("POLICY_CHECK", "MAY_READ"),
        "",
    ),
    row(
        "§1.7",
        "appraise_tcb: root-owned file appraised",
        "builtin:appraise_tcb",
        req("FILE_CHECK", "MAY_READ", fowner=0, fsmagic=EXT4),
        "appraise",
        appraise_type=None,
        appraise_line=15,
    ),
    row(
        "§1.7",
        "appraise_tcb: any hook (no func)",
        "builtin:appraise_tcb",
        req("BPRM_CHECK", "MAY_EXEC", fowner=0, fsmagic=EXT4),
        "appraise",
    ),
    row(
        "§1.7",
        "appraise_tcb: user-owned file not appraised",
        "builtin:appraise_tcb",
        req("FILE_CHECK", "MAY_READ", fowner=1000, fsmagic=EXT4),
        "",
    ),
    *(
        row(
            "§1.7",
            f"appraise_tcb: {name} excluded",
            "builtin:appraise_tcb",
            req("FILE_CHECK", "MAY_READ", fowner=0, fsmagic=magic),
            "",
        )
        for name, magic in APPRAISE_TCB_MAGICS.items()
    ),
    row(
        "§1.7",
        "appraise_tcb: no measurement",
        "builtin:appraise_tcb",
        req("BPRM_CHECK", "MAY_EXEC", fowner=0, uid=0, fsmagic=EXT4),
        "appraise",
    ),
    row(
        "§1.7",
        "ima_appraise_tcb is appraise_tcb",
        "builtin:ima_appraise_tcb",
        req("FILE_CHECK", "MAY_READ", fowner=0, fsmagic=EXT4),
        "appraise",
    ),
    *(
        row(
            "§1.7",
            f"secure_boot: {hook} needs a signature",
            "builtin:secure_boot",
            req(hook, "MAY_READ"),
            "appraise",
            appraise_type="imasig",
        )
        for hook in ("MODULE_CHECK", "FIRMWARE_CHECK", "KEXEC_KERNEL_CHECK", "POLICY_CHECK")
    ),
    row(
        "§1.7",
        "secure_boot: initramfs not",
        "builtin:secure_boot",
        req("KEXEC_INITRAMFS_CHECK", "MAY_READ"),
        "",
    ),
    row(
        "§1.7",
        "secure_boot: files not",
        "builtin:secure_boot",
        req("FILE_CHECK", "MAY_READ", fowner=0),
        "",
    ),
    row(
        "§1.7",
        "critical_data: any label measured",
        "builtin:critical_data",
        req("CRITICAL_DATA", data="kernel_version"),
        "measure",
    ),
    row(
        "§1.7",
        "critical_data: keys not",
        "builtin:critical_data",
        req("KEY_CHECK", data=".ima"),
        "",
    ),
    row(
        "§1.7",
        "critical_data: files not",
        "builtin:critical_data",
        req("FILE_CHECK", "MAY_READ", uid=0),
        "",
    ),
    row(
        "§1.7",
        "combined: secure_boot comes before appraise_tcb",
        "builtin:tcb|appraise_tcb|secure_boot|critical_data",
        req("MODULE_CHECK", "MAY_READ", fowner=0, fsmagic=EXT4),
        "measure,appraise",
        appraise_type="imasig",
    ),
    row(
        "§1.7",
        "combined: procfs neither measured nor appraised",
        "builtin:tcb appraise_tcb",
        req("FILE_CHECK", "MAY_READ", fowner=0, uid=0, fsmagic=PROC),
        "",
    ),
    row(
        "§1.7",
        "combined: critical data measured",
        "builtin:tcb,appraise_tcb,critical_data",
        req("CRITICAL_DATA", data="selinux"),
        "measure",
    ),
]


def _decide_id(r: Decide) -> str:
    return f"{_sec(r.cite)} {r.what}"


_FLAG_ATTRS = {
    "pcr",
    "template",
    "permit_directio",
    "appraise_type",
    "digest_type",
    "appraise_algos",
    "digsig_required",
    "modsig_allowed",
    "check_blacklist",
    "verity_required",
}


@pytest.mark.parametrize("r", DECIDE_ROWS, ids=_decide_id)
def test_decision_conformance(r: Decide) -> None:
    decision = decide_both(rules_of(r.policy), r.request)
    assert acts(decision) == set(r.actions)
    for key, want in r.expect:
        if key.endswith("_line"):
            rule = decision.rule_for(key.removesuffix("_line"))
            assert rule is not None, f"nothing decided {key}"
            assert rule.line == want, key
        elif key == "appraise_algos":
            got = decision.appraise_algos
            assert (None if got is None else set(got)) == want
        else:
            assert key in _FLAG_ATTRS, key
            assert getattr(decision, key) == want, key


def test_decide_rows_cover_every_action_kind_and_every_builtin() -> None:
    kinds = set().union(*(r.actions for r in DECIDE_ROWS))
    assert kinds == {"measure", "appraise", "audit", "hash"}
    used = " ".join(r.policy for r in DECIDE_ROWS if r.policy.startswith("builtin:"))
    for name in ("tcb", "ima_tcb", "appraise_tcb", "secure_boot", "critical_data"):
        assert name in used


# --------------------------------------------------------------------------------------
# §1.7 built-ins, rule by rule
# --------------------------------------------------------------------------------------

_DONT_MEASURE_TEXT = [
    "dont_measure fsmagic=0x9fa0",
    "dont_measure fsmagic=0x62656572",
    "dont_measure fsmagic=0x64626720",
    "dont_measure func=FILE_CHECK fsmagic=0x1021994",
    "dont_measure fsmagic=0x1cd1",
    "dont_measure fsmagic=0x42494e4d",
    "dont_measure fsmagic=0x73636673",
    "dont_measure fsmagic=0xf97cff8c",
    "dont_measure fsmagic=0x43415d53",
    "dont_measure fsmagic=0x27e0eb",
    "dont_measure fsmagic=0x63677270",
    "dont_measure fsmagic=0x6e736673",
    "dont_measure fsmagic=0xde5e81e4",
]
_ORIGINAL_TCB_TEXT = [
    "measure func=MMAP_CHECK mask=MAY_EXEC",
    "measure func=BPRM_CHECK mask=MAY_EXEC",
    "measure func=FILE_CHECK mask=MAY_READ uid=0",
    "measure func=MODULE_CHECK",
    "measure func=FIRMWARE_CHECK",
]
_DEFAULT_TCB_TEXT = [
    "measure func=MMAP_CHECK mask=MAY_EXEC",
    "measure func=BPRM_CHECK mask=MAY_EXEC",
    "measure func=FILE_CHECK mask=^MAY_READ euid=0",
    "measure func=FILE_CHECK mask=^MAY_READ uid=0",
    "measure func=MODULE_CHECK",
    "measure func=FIRMWARE_CHECK",
    "measure func=POLICY_CHECK",
]
_APPRAISE_TCB_TEXT = [
    f"dont_appraise fsmagic=0x{m:x}"
    for m in (
        0x9FA0,
        0x62656572,
        0x64626720,
        0x01021994,
        0x858458F6,
        0x1CD1,
        0x42494E4D,
        0x73636673,
        0xF97CFF8C,
        0x43415D53,
        0x6E736673,
        0xDE5E81E4,
        0x27E0EB,
        0x63677270,
    )
] + ["appraise fowner=0"]
_SECURE_BOOT_TEXT = [
    "appraise func=MODULE_CHECK appraise_type=imasig",
    "appraise func=FIRMWARE_CHECK appraise_type=imasig",
    "appraise func=KEXEC_KERNEL_CHECK appraise_type=imasig",
    "appraise func=POLICY_CHECK appraise_type=imasig",
]
_CRITICAL_DATA_TEXT = ["measure func=CRITICAL_DATA"]

BUILTIN_ROWS = [
    ("tcb", _DONT_MEASURE_TEXT + _DEFAULT_TCB_TEXT),
    ("ima_tcb", _DONT_MEASURE_TEXT + _ORIGINAL_TCB_TEXT),
    ("tcb|ima_tcb", _DONT_MEASURE_TEXT + _DEFAULT_TCB_TEXT),
    ("ima_tcb|tcb", _DONT_MEASURE_TEXT + _ORIGINAL_TCB_TEXT),
    ("appraise_tcb", _APPRAISE_TCB_TEXT),
    ("ima_appraise_tcb", _APPRAISE_TCB_TEXT),
    ("secure_boot", _SECURE_BOOT_TEXT),
    ("critical_data", _CRITICAL_DATA_TEXT),
    (
        # listed in any order, assembled in the kernel's boot order
        "critical_data|appraise_tcb|secure_boot|tcb",
        _DONT_MEASURE_TEXT
        + _DEFAULT_TCB_TEXT
        + _SECURE_BOOT_TEXT
        + _APPRAISE_TCB_TEXT
        + _CRITICAL_DATA_TEXT,
    ),
    ("tcb appraise_tcb", _DONT_MEASURE_TEXT + _DEFAULT_TCB_TEXT + _APPRAISE_TCB_TEXT),
    ("tcb\nsecure_boot", _DONT_MEASURE_TEXT + _DEFAULT_TCB_TEXT + _SECURE_BOOT_TEXT),
]


@pytest.mark.parametrize(
    ("names", "lines"), BUILTIN_ROWS, ids=[f"{_sec('§1.7')} {n!r}" for n, _ in BUILTIN_ROWS]
)
def test_builtin_rule_by_rule(names: str, lines: list[str]) -> None:
    b = builtin_policy(names)
    assert [r.canonical() for r in b.policy.rules] == lines
    assert b.policy.text() == "".join(line + " \n" for line in lines)
    assert b.fail_securely is False


def test_builtin_fail_securely_adds_no_rule_but_marks_appraisal() -> None:
    # §1.7: fail_securely is not a rule set
    alone = builtin_policy("fail_securely")
    assert alone.policy.rules == ()
    assert alone.fail_securely is True
    both = builtin_policy("appraise_tcb|fail_securely")
    assert [r.canonical() for r in both.policy.rules] == _APPRAISE_TCB_TEXT
    assert both.fail_securely is True


def test_builtin_list_form() -> None:
    assert (
        builtin_policy(["tcb", "secure_boot"]).policy.rules
        == builtin_policy("tcb|secure_boot").policy.rules
    )


@pytest.mark.parametrize("names", ["tcbx", "tcb|nope", "appraise-tcb", ""])
def test_builtin_unknown_or_empty_name_is_a_policy_error(names: str) -> None:
    # §1.7: an unknown name is reported ("policy ... not found")
    with pytest.raises(PolicyError):
        builtin_policy(names)
