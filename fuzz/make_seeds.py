"""Write the seed corpora under fuzz/seeds/<target>/: ``python -m fuzz.make_seeds``.

Each seed is a well-formed input made with imaguard's own serializers (or taken from the
repository's examples: packaging/imaguard.toml, the built-in policies, docs/protocol.md),
so the fuzzer starts from every layout a parser accepts. The output is deterministic
(fixed bytes, no clock, no randomness); the seeds are committed and small, and the test
``tests/unit/test_fuzz_harnesses.py`` checks they are what this script writes.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from imaguard.formats import digestlist, measurelist, xattr
from imaguard.formats.hashalgo import by_name
from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.template import (
    TemplateDescriptor,
    TemplateEntry,
    encode_digest_ng,
    encode_digest_ngv2,
    encode_name,
)
from imaguard.policy import BUILTIN_NAMES, builtin_policy
from imaguard.service._config import EMBEDDED_DEFAULT
from imaguard.service._protocol import serialize as frame

ROOT = Path(__file__).resolve().parents[1]


def _d(algo: str, label: str) -> bytes:
    """A fixed digest of ``algo``'s size, different per label."""
    size = by_name(algo).digest_size
    return hashlib.shake_256(label.encode()).digest(size)


def _sig(kind: xattr.XattrType, algo: str, size: int) -> bytes:
    return xattr.SignatureValue(kind, by_name(algo), 0x1234ABCD, b"\x5a" * size).serialize()


def xattr_seeds() -> dict[str, bytes]:
    return {
        "digest-sha1": xattr.DigestValue(_d("sha1", "a")).serialize(),
        "digest-md5": xattr.DigestValue(_d("md5", "a")).serialize(),
        "digest-md5-padded": xattr.DigestValue(_d("md5", "b"), padded=True).serialize(),
        "digest-ng-sha256": xattr.DigestNgValue(by_name("sha256"), _d("sha256", "a")).serialize(),
        "digest-ng-sha512": xattr.DigestNgValue(by_name("sha512"), _d("sha512", "a")).serialize(),
        "hmac": xattr.HmacValue(_d("sha1", "h")).serialize(),
        "sig-v2-rsa": _sig(xattr.XattrType.EVM_IMA_XATTR_DIGSIG, "sha256", 256),
        "sig-v2-ecdsa": _sig(xattr.XattrType.EVM_IMA_XATTR_DIGSIG, "sha384", 71),
        "sig-portable": _sig(xattr.XattrType.EVM_XATTR_PORTABLE_DIGSIG, "sha256", 64),
        "sig-v3-verity": _sig(xattr.XattrType.IMA_VERITY_DIGSIG, "sha256", 72),
    }


_POLICY = """\
#@ version 3
# comments and blank lines are kept out of the rules

dont_measure fsmagic=0x9fa0
measure func=BPRM_CHECK mask=MAY_EXEC uid=0 fowner>1000 pcr=11 template=ima-sig
measure func=FILE_CHECK mask=^MAY_READ euid<5 fsuuid=2f7c6d0e-6f0a-4c47-9e8a-0d3a7a2a1b5c
appraise func=MODULE_CHECK appraise_type=imasig|modsig appraise_algos=sha256,sha512
appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3
measure func=KEY_CHECK keyrings=.ima|.builtin_trusted_keys
measure func=CRITICAL_DATA label=selinux
appraise func=SETXATTR_CHECK appraise_algos=sha256
audit func=MMAP_CHECK mask=MAY_EXEC obj_type=bin_t subj_user=system_u
hash func=FILE_CHECK fsname=ext4 fs_subtype=fuse gid=100 fgroup=0
dont_appraise fsmagic=0x01021994 permit_directio
"""

_IMAGUARD_POLICY = """\
appraise func=PLUGIN_CHECK appraise_type=imasig path_prefix=/opt/plugins/ cache=no
measure func=CONFIG_CHECK path=/etc/app.conf
appraise func=BPRM_CHECK appraise_type=digestlist
"""


def policy_seeds(mode: str) -> dict[str, bytes]:
    texts = {name: builtin_policy(name).policy.text() for name in BUILTIN_NAMES}
    out = {f"builtin-{name}": text.encode() for name, text in texts.items() if text}
    out["mixed"] = _POLICY.encode()
    if mode == "imaguard":
        out["extensions"] = _IMAGUARD_POLICY.encode()
    return out


def _entries() -> list[TemplateEntry]:
    def t(name: str) -> TemplateDescriptor:
        return TemplateDescriptor.lookup(name)

    name = encode_name("/usr/bin/true")
    dng = encode_digest_ng("sha256", _d("sha256", "f"))
    sig = _sig(xattr.XattrType.EVM_IMA_XATTR_DIGSIG, "sha256", 32)
    return [
        TemplateEntry(10, t("ima"), (_d("sha1", "f"), encode_name("boot_aggregate", "n"))),
        TemplateEntry(10, t("ima-ng"), (dng, name)),
        TemplateEntry(10, t("ima-ng"), (encode_digest_ng("sha1", _d("sha1", "v")), name), True),
        TemplateEntry(10, t("ima-sig"), (dng, name, sig)),
        TemplateEntry(10, t("ima-sig"), (dng, name, b"")),
        TemplateEntry(
            11, t("ima-ngv2"), (encode_digest_ngv2("verity", "sha256", _d("sha256", "v")), name)
        ),
        TemplateEntry(
            11, t("ima-sigv2"), (encode_digest_ngv2("ima", "sha256", _d("sha256", "s")), name, sig)
        ),
        TemplateEntry(10, t("ima-buf"), (dng, encode_name("kexec-cmdline"), b"root=/dev/sda1 ro")),
        TemplateEntry(10, t("ima-modsig"), (dng, name, b"", b"", b"")),
        TemplateEntry(
            10,
            t("evm-sig"),
            (
                dng,
                name,
                b"",
                b"security.ima\0",
                b"\x21\x00",
                sig[:33],
                b"\0\0\0\0",
                b"\0\0\0\0",
                b"\xed\x81",
            ),
        ),
        TemplateEntry(
            12,
            t("d-ng|n-ng|iuid|igid|imode"),
            (dng, name, b"\xe8\x03\0\0", b"\0\0\0\0", b"\xa4\x81"),
        ),
    ]


def measurelist_seeds(kind: str) -> dict[str, bytes]:
    entries = _entries()
    out: dict[str, bytes] = {}
    for bank in ("sha1", "sha256"):
        if kind == "binary":
            out[f"all-templates-{bank}"] = measurelist.serialize_binary(entries, bank)
            for e in entries[:3]:
                out[f"{e.template.name}-{bank}"] = measurelist.serialize_binary([e], bank)
        else:
            out[f"all-templates-{bank}"] = measurelist.serialize_ascii(entries, bank)
            for e in entries[:3]:
                out[f"{e.template.name}-{bank}"] = measurelist.serialize_ascii([e], bank)
    return out


def keylime_seeds() -> dict[str, bytes]:
    full = RuntimePolicy(
        digests={"/usr/bin/true": (_d("sha256", "t").hex(), _d("sha1", "t").hex())},
        excludes=("/tmp/.*", "^/var/log/"),
        keyrings={".ima": (_d("sha256", "k").hex(),)},
        ima_buf={"kexec-cmdline": (_d("sha256", "c").hex(),)},
        ignored_keyrings=(".builtin_trusted_keys",),
        log_hash_alg="sha256",
        verification_keys=RuntimePolicy.keyring_string([b"\x30\x59" + b"\x01" * 89], [0x1234ABCD]),
        generator=1,
        release=7,
        timestamp="2026-12-05 09:00:00",
    )
    return {
        "minimal": RuntimePolicy().serialize().encode(),
        "full": full.serialize().encode(),
    }


def digestlist_seeds() -> dict[str, bytes]:
    entries = [(_d("sha256", str(i)), f"/usr/bin/prog{i}") for i in range(4)]
    with_paths = digestlist.DigestList.build(
        "sha256", entries, created=1_765_000_000, source="dpkg:coreutils 9.1-1"
    )
    bare = digestlist.DigestList.build(
        "sha1", [(_d("sha1", str(i)), None) for i in range(3)], with_paths=False, source="tree:/opt"
    )
    body = digestlist.serialize(with_paths)
    value = _sig(xattr.XattrType.EVM_IMA_XATTR_DIGSIG, "sha256", 64)
    return {
        "paths-sha256": body,
        "no-paths-sha1": digestlist.serialize(bare),
        "empty": digestlist.serialize(digestlist.DigestList(by_name("sha512"), ())),
        "signed": digestlist.append_signature(body, value),
    }


def protocol_seeds() -> dict[str, bytes]:
    requests = [
        {"v": 1, "op": "status", "id": 1},
        {"v": 1, "op": "show", "id": 7, "name": "plugins"},
        {
            "v": 1,
            "op": "load",
            "id": 2,
            "name": "plugins",
            "text": "appraise func=PLUGIN_CHECK appraise_type=imasig\n",
            "lock": "append-only",
            "version": 3,
            "signature": "AwIEEjSrzQAgWlpa",
        },
        {"v": 1, "op": "appraise", "id": 3, "path": "/usr/bin/true", "require": "signature"},
        {"v": 1, "id": 7, "ok": False, "error": {"code": "locked", "message": "sealed"}},
        {"v": 1, "id": 8, "ok": True, "result": {"rules": [1, 2.5, None, True, "\u00e9"]}},
    ]
    return {f"frame-{i}": frame(r) for i, r in enumerate(requests)}


def config_seeds() -> dict[str, bytes]:
    example = (ROOT / "packaging" / "imaguard.toml").read_text()
    full = """\
mode = "enforce"
watch = ["/", "tmp"]
state = "/var/lib/imaguard"
socket = "/run/imaguard/control.sock"
socket_mode = 0o600
keyrings = ["/etc/imaguard/keys/ima"]
interpreters = ["/usr/bin/python3*"]
tpm = "device:/dev/tpmrm0"
policy_keyrings = ["keys/policy"]
workers = 8
queue_limit = 1024
open_events = false
cache_opens = true
audit_syslog = true
restart_delay_max = 2.5
owners = "owners.d"
read_access = "owners"
max_clients = 32
max_clients_per_uid = 4
digestlist_keyrings = ["/etc/imaguard/keys/digestlists"]
trust = "/var/lib/imaguard/trust"
measure_listed = false

[[policy]]
name = "packages"
owner = "admin"
rules = "appraise func=BPRM_CHECK appraise_type=digestlist"

[[policy]]
name = "signed"
owner = "plugins"
file = "/etc/imaguard/policy.d/signed.policy"
lock = "signed-only"
"""
    example = example.replace('watch = ["/srv/apps"]', 'watch = ["/"]')
    return {
        "embedded-default": EMBEDDED_DEFAULT.encode(),
        "packaging-example": example.encode(),
        "every-key": full.encode(),
    }


def owner_seeds() -> dict[str, bytes]:
    return {
        "plugins": b'name = "plugins"\nuids = [1001]\ngids = []\nunits = ["plugin-host.service"]\n'
        b'exes = ["/usr/bin/plugin-host"]\nkeyring = "/"\n',
        "packages": b'name = "packages"\nuids = [0]\ndigestlists = true\n',
    }


def all_seeds() -> dict[str, dict[str, bytes]]:
    """Every target's seeds: target name -> file name -> bytes."""
    return {
        "xattr": xattr_seeds(),
        "policy-kernel": policy_seeds("kernel"),
        "policy-imaguard": policy_seeds("imaguard"),
        "measurelist-binary": measurelist_seeds("binary"),
        "measurelist-ascii": measurelist_seeds("ascii"),
        "keylime": keylime_seeds(),
        "digestlist": digestlist_seeds(),
        "protocol": protocol_seeds(),
        "config": config_seeds(),
        "owner": owner_seeds(),
    }


def main() -> int:
    base = Path(__file__).resolve().parent / "seeds"
    for target, seeds in all_seeds().items():
        directory = base / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            if old.name not in seeds:
                old.unlink()
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
