"""EVM: ``security.evm`` HMACs and signatures over a file's security metadata (spec §6).

What is hashed, in order:

1. the raw value of each protected xattr that is present, in the kernel's order
   (security.selinux, SMACK64, SMACK64EXEC, SMACK64TRANSMUTE, SMACK64MMAP, apparmor,
   ima, capability) - no names, no lengths;
2. ``struct h_misc`` (24 bytes, little-endian on x86-64): inode number (u64), generation
   (u32), uid (u32), gid (u32), mode (u16), 2 bytes of padding. A **portable** signature
   (type 0x05) zeroes the inode number and generation;
3. the 16-byte filesystem UUID - for HMACs and non-portable (0x03) signatures only.

The HMAC (type 0x02) is HMAC-SHA1 keyed with the key zero-padded to 128 bytes (so the
effective key is SHA1 of that block); a signature is a v2 header and a signature over the
digest of the data above. Verification returns the kernel's EVM statuses: ``pass``,
``pass_immutable`` (a good portable signature), ``fail``, ``fail_immutable``, ``no_label``
(security.evm missing while protected xattrs exist), ``no_xattrs``, ``unknown``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from imaguard.appraise._files import FileRef, generation, open_target
from imaguard.crypto._keyring import Keyring
from imaguard.crypto._keys import PrivateKey
from imaguard.errors import FormatError, StoreError, UsageError
from imaguard.formats import hashalgo
from imaguard.formats.xattr import HmacValue, SignatureValue, XattrType
from imaguard.formats.xattr import parse as parse_value

__all__ = [
    "PROTECTED_XATTRS",
    "EvmResult",
    "evm_data",
    "evm_hmac",
    "evm_sign",
    "evm_verify",
    "parse_uuid",
    "sign_file_evm",
]

PROTECTED_XATTRS = (
    "security.selinux",
    "security.SMACK64",
    "security.SMACK64EXEC",
    "security.SMACK64TRANSMUTE",
    "security.SMACK64MMAP",
    "security.apparmor",
    "security.ima",
    "security.capability",
)
HMAC_KEY_PAD = 128
_H_MISC = struct.Struct("<QIIIH2x")


def parse_uuid(text: str | bytes | None) -> bytes | None:
    """A filesystem UUID as 16 bytes, from its canonical text or raw bytes."""
    if text is None:
        return None
    if isinstance(text, bytes):
        if len(text) != 16:
            raise UsageError("a filesystem UUID is 16 bytes")
        return text
    try:
        return uuidlib.UUID(text).bytes
    except ValueError:
        raise UsageError(f"{text!r} is not a UUID") from None


def _xattr(fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(fd, name)
    except OSError:
        return None


def evm_data(
    fd: int,
    st: os.stat_result,
    *,
    portable: bool,
    fs_uuid: bytes | None,
    xattrs: tuple[str, ...] = PROTECTED_XATTRS,
    ima_attr: str = "security.ima",
) -> bytes:
    """The bytes an EVM HMAC or signature covers (module doc), read from an open file."""
    parts = []
    for name in xattrs:
        value = _xattr(fd, ima_attr if name == "security.ima" else name)
        if value is not None:
            parts.append(value)
    ino, gen = (0, 0) if portable else (st.st_ino, generation(fd) or 0)
    parts.append(_H_MISC.pack(ino, gen, st.st_uid, st.st_gid, st.st_mode & 0xFFFF))
    if not portable:
        if fs_uuid is None:
            raise UsageError(
                "a non-portable EVM value covers the filesystem UUID: give it "
                "(--uuid), or use a portable signature"
            )
        parts.append(fs_uuid)
    return b"".join(parts)


def evm_hmac(data: bytes, key: bytes) -> HmacValue:
    """The kernel's EVM HMAC over ``data`` (key zero-padded to 128 bytes, HMAC-SHA1)."""
    if not 0 < len(key) <= HMAC_KEY_PAD:
        raise UsageError(f"an EVM HMAC key has 1-{HMAC_KEY_PAD} bytes, got {len(key)}")
    return HmacValue(hmac.new(key.ljust(HMAC_KEY_PAD, b"\0"), data, hashlib.sha1).digest())


def evm_sign(
    data: bytes, key: PrivateKey, *, portable: bool, algorithm: str = "sha256"
) -> SignatureValue:
    algo = hashalgo.by_name(algorithm)
    digest = algo.new()
    digest.update(data)
    kind = XattrType.EVM_XATTR_PORTABLE_DIGSIG if portable else XattrType.EVM_IMA_XATTR_DIGSIG
    return SignatureValue(kind, algo, key.key_id, key.sign_digest(algo, digest.digest()))


@dataclass(frozen=True)
class EvmResult:
    status: str
    cause: str | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status in ("pass", "pass_immutable")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "cause": self.cause, "detail": self.detail}


def evm_verify(
    ref: FileRef,
    *,
    keyring: Keyring | None = None,
    hmac_key: bytes | None = None,
    fs_uuid: bytes | None = None,
    evm_attr: str = "security.evm",
    ima_attr: str = "security.ima",
) -> EvmResult:
    """Check ``security.evm`` of an open file (never raises for a bad file)."""
    raw = _xattr(ref.fd, evm_attr)
    if raw is None:
        present = any(
            _xattr(ref.fd, ima_attr if n == "security.ima" else n) is not None
            for n in PROTECTED_XATTRS
        )
        if present:
            return EvmResult("no_label", "missing-HMAC", f"{evm_attr} is missing")
        return EvmResult("no_xattrs", "missing-HMAC", "no protected xattrs and no EVM value")
    try:
        value = parse_value(raw)
    except FormatError as e:
        return EvmResult("fail", "invalid-HMAC", str(e))
    try:
        if isinstance(value, HmacValue):
            if hmac_key is None:
                return EvmResult("unknown", None, "an EVM HMAC, but no HMAC key was given")
            data = evm_data(ref.fd, ref.st, portable=False, fs_uuid=fs_uuid, ima_attr=ima_attr)
            good = hmac.compare_digest(evm_hmac(data, hmac_key).hmac, value.hmac)
            return (
                EvmResult("pass")
                if good
                else EvmResult("fail", "invalid-HMAC", "HMAC does not match the metadata")
            )
        if isinstance(value, SignatureValue) and value.type in (
            XattrType.EVM_IMA_XATTR_DIGSIG,
            XattrType.EVM_XATTR_PORTABLE_DIGSIG,
        ):
            portable = value.type == XattrType.EVM_XATTR_PORTABLE_DIGSIG
            if portable and _xattr(ref.fd, ima_attr) is None:
                return EvmResult(
                    "fail_immutable",
                    "invalid-fail-immutable",
                    "a portable EVM signature needs security.ima",
                )
            data = evm_data(ref.fd, ref.st, portable=portable, fs_uuid=fs_uuid, ima_attr=ima_attr)
            digest = value.algorithm.new()
            digest.update(data)
            certs = keyring.lookup(value.key_id) if keyring is not None else ()
            if not certs:
                return EvmResult(
                    "fail_immutable" if portable else "fail",
                    "invalid-signature",
                    f"no key with id {value.key_id:08x}",
                )
            ok = any(c.verifies(value.algorithm, digest.digest(), value.signature) for c in certs)
            if ok:
                return EvmResult("pass_immutable" if portable else "pass")
            return EvmResult(
                "fail_immutable" if portable else "fail",
                "invalid-fail-immutable" if portable else "invalid-HMAC",
                "signature does not match the metadata",
            )
    except UsageError as e:
        return EvmResult("unknown", None, str(e))
    return EvmResult("fail", "invalid-HMAC", f"{evm_attr} holds a value of type 0x{raw[0]:02x}")


def sign_file_evm(
    path: str | os.PathLike[str],
    *,
    key: PrivateKey | None = None,
    hmac_key: bytes | None = None,
    portable: bool = True,
    fs_uuid: bytes | None = None,
    algorithm: str = "sha256",
    evm_attr: str = "security.evm",
    ima_attr: str = "security.ima",
) -> bytes:
    """Compute and write ``security.evm`` for a file; returns the value written."""
    if (key is None) == (hmac_key is None):
        raise UsageError("give a signing key or an HMAC key (one of them)")
    with open_target(path) as ref:
        if key is not None and portable and _xattr(ref.fd, ima_attr) is None:
            raise UsageError(f"{ref.name}: a portable EVM signature needs {ima_attr} first")
        data = evm_data(
            ref.fd,
            ref.st,
            portable=portable and key is not None,
            fs_uuid=fs_uuid,
            ima_attr=ima_attr,
        )
        value = (
            evm_sign(data, key, portable=portable, algorithm=algorithm).serialize()
            if key is not None
            else evm_hmac(data, hmac_key or b"").serialize()
        )
        try:
            os.setxattr(ref.fd, evm_attr, value)
        except OSError as e:
            raise StoreError(f"{ref.name}: cannot write {evm_attr}: {e.strerror or e}") from e
    return value
