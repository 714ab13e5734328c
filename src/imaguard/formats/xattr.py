"""``security.ima`` and ``security.evm`` values (``enum evm_ima_xattr_type``).

Layouts, from the kernel's security/integrity/integrity.h (``struct evm_ima_xattr_data``,
``struct signature_v2_hdr``):

======  ===========================  ==================================================
type    name                         bytes after the type byte
======  ===========================  ==================================================
0x01    IMA_XATTR_DIGEST             digest (sha1: 20 bytes; md5: 16, or 20 zero-padded)
0x02    EVM_XATTR_HMAC               HMAC-SHA1 (20 bytes)
0x03    EVM_IMA_XATTR_DIGSIG         version 2, hash_algo, keyid (BE32), size (BE16), sig
0x04    IMA_XATTR_DIGEST_NG          hash_algo, digest
0x05    EVM_XATTR_PORTABLE_DIGSIG    as 0x03
0x06    IMA_VERITY_DIGSIG            version 3, then as 0x03
======  ===========================  ==================================================

Every value type has ``parse(bytes)`` (a classmethod) and ``serialize()``; the module
function :func:`parse` dispatches on the type byte. Parsing is strict: a value that
does not round-trip byte for byte is refused with :class:`~imaguard.FormatError`,
and unknown types and versions are refused rather than kept (a signature format
must never be guessed).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from imaguard.errors import FormatError
from imaguard.formats.hashalgo import HASH_MAX_DIGESTSIZE, HashAlgo, by_id, by_name

__all__ = [
    "SIGNATURE_HEADER_SIZE",
    "DigestNgValue",
    "DigestValue",
    "HmacValue",
    "ImaValue",
    "SignatureValue",
    "XattrType",
    "digest_value",
    "file_id",
    "is_signature",
    "parse",
]

SIGNATURE_HEADER_SIZE = 9
_HEADER = struct.Struct(">BBBIH")


class XattrType(IntEnum):
    """The first byte of a ``security.ima`` / ``security.evm`` value."""

    IMA_XATTR_DIGEST = 0x01
    EVM_XATTR_HMAC = 0x02
    EVM_IMA_XATTR_DIGSIG = 0x03
    IMA_XATTR_DIGEST_NG = 0x04
    EVM_XATTR_PORTABLE_DIGSIG = 0x05
    IMA_VERITY_DIGSIG = 0x06


def _need(data: bytes, what: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise FormatError(f"{what}: empty value")


@dataclass(frozen=True)
class DigestValue:
    """Type 0x01: a legacy digest with no algorithm byte (sha1, or md5 by length)."""

    digest: bytes
    padded: bool = False
    """True for an md5 digest stored padded with 4 zero bytes to 20 bytes."""

    type = XattrType.IMA_XATTR_DIGEST

    def __post_init__(self) -> None:
        if len(self.digest) not in (16, 20):
            raise FormatError(
                f"0x01 digest value: digest must be 16 (md5) or 20 (sha1) bytes, "
                f"got {len(self.digest)}"
            )
        if self.padded and len(self.digest) != 16:
            raise FormatError("0x01 digest value: only an md5 digest can be padded")

    @property
    def algorithm(self) -> HashAlgo:
        """md5 for 16-byte digests, sha1 for 20 bytes (the kernel's length rule)."""
        return by_name("md5") if len(self.digest) == 16 else by_name("sha1")

    @classmethod
    def parse(cls, data: bytes) -> DigestValue:
        _need(data, "0x01 digest value")
        data = bytes(data)
        if data[0] != XattrType.IMA_XATTR_DIGEST:
            raise FormatError(f"0x01 digest value: type byte is 0x{data[0]:02x}")
        body = data[1:]
        if len(body) == 16:
            return cls(body)
        if len(body) == 20:
            # The kernel reads 21 bytes ending in four zero bytes as a padded md5.
            if body[16:] == b"\0\0\0\0":
                return cls(body[:16], padded=True)
            return cls(body)
        raise FormatError(f"0x01 digest value: {len(data)} bytes; expected 17 (md5) or 21 (sha1)")

    def serialize(self) -> bytes:
        tail = b"\0\0\0\0" if self.padded else b""
        return bytes([self.type]) + self.digest + tail


@dataclass(frozen=True)
class DigestNgValue:
    """Type 0x04: ``04 <hash_algo id> <digest>``."""

    algorithm: HashAlgo
    digest: bytes

    type = XattrType.IMA_XATTR_DIGEST_NG

    def __post_init__(self) -> None:
        if len(self.digest) != self.algorithm.digest_size:
            raise FormatError(
                f"0x04 digest value: {self.algorithm.name} digest must be "
                f"{self.algorithm.digest_size} bytes, got {len(self.digest)}"
            )

    @classmethod
    def parse(cls, data: bytes) -> DigestNgValue:
        _need(data, "0x04 digest value")
        data = bytes(data)
        if data[0] != XattrType.IMA_XATTR_DIGEST_NG:
            raise FormatError(f"0x04 digest value: type byte is 0x{data[0]:02x}")
        if len(data) < 2:
            raise FormatError("0x04 digest value: truncated before the algorithm byte")
        algo = by_id(data[1])
        return cls(algo, data[2:])

    def serialize(self) -> bytes:
        return bytes([self.type, self.algorithm.id]) + self.digest


@dataclass(frozen=True)
class HmacValue:
    """Type 0x02 (``security.evm`` only): HMAC-SHA1, exactly 20 bytes."""

    hmac: bytes

    type = XattrType.EVM_XATTR_HMAC

    def __post_init__(self) -> None:
        if len(self.hmac) != 20:
            raise FormatError(f"0x02 EVM HMAC value: HMAC must be 20 bytes, got {len(self.hmac)}")

    @classmethod
    def parse(cls, data: bytes) -> HmacValue:
        _need(data, "0x02 EVM HMAC value")
        data = bytes(data)
        if data[0] != XattrType.EVM_XATTR_HMAC:
            raise FormatError(f"0x02 EVM HMAC value: type byte is 0x{data[0]:02x}")
        if len(data) != 21:
            raise FormatError(f"0x02 EVM HMAC value: {len(data)} bytes; expected exactly 21")
        return cls(data[1:])

    def serialize(self) -> bytes:
        return bytes([self.type]) + self.hmac


_SIG_TYPES = {
    XattrType.EVM_IMA_XATTR_DIGSIG: 2,
    XattrType.EVM_XATTR_PORTABLE_DIGSIG: 2,
    XattrType.IMA_VERITY_DIGSIG: 3,
}


@dataclass(frozen=True)
class SignatureValue:
    """Types 0x03, 0x05, 0x06: the 9-byte ``signature_v2_hdr`` and a raw signature.

    ``key_id`` is the 4-byte key identifier (big-endian on the wire), ``signature`` the
    raw signature bytes (RSA PKCS#1 v1.5 block or DER ECDSA-Sig-Value).
    """

    type: XattrType
    algorithm: HashAlgo
    key_id: int
    signature: bytes

    def __post_init__(self) -> None:
        if self.type not in _SIG_TYPES:
            raise FormatError(f"signature value: type 0x{int(self.type):02x} is not a signature")
        if not 0 <= self.key_id <= 0xFFFFFFFF:
            raise FormatError(f"signature value: key id {self.key_id} does not fit 4 bytes")
        if not 0 < len(self.signature) <= 0xFFFF:
            raise FormatError(
                f"signature value: signature length {len(self.signature)} not in 1-65535"
            )

    @property
    def version(self) -> int:
        """2 for 0x03/0x05 (signs the file digest), 3 for 0x06 (signs ``ima_file_id``)."""
        return _SIG_TYPES[self.type]

    @property
    def key_id_hex(self) -> str:
        """The key id as the kernel names it: 8 lowercase hex digits."""
        return f"{self.key_id:08x}"

    @classmethod
    def parse(cls, data: bytes) -> SignatureValue:
        _need(data, "signature value")
        data = bytes(data)
        try:
            sig_type = XattrType(data[0])
        except ValueError:
            raise FormatError(f"signature value: unknown type byte 0x{data[0]:02x}") from None
        if sig_type not in _SIG_TYPES:
            raise FormatError(f"signature value: type 0x{data[0]:02x} is not a signature")
        what = f"0x{int(sig_type):02x} signature value"
        if len(data) <= SIGNATURE_HEADER_SIZE:
            raise FormatError(
                f"{what}: {len(data)} bytes; the 9-byte header and a signature need at least 10"
            )
        _, version, algo_id, key_id, size = _HEADER.unpack_from(data)
        expected = _SIG_TYPES[sig_type]
        if version != expected:
            if version == 1 and sig_type == XattrType.EVM_IMA_XATTR_DIGSIG:
                raise FormatError(f"{what}: version 1 (legacy RSA, evmctl --rsa) is not supported")
            raise FormatError(f"{what}: version {version}; expected {expected}")
        algo = by_id(algo_id)
        rest = len(data) - SIGNATURE_HEADER_SIZE
        if size != rest:
            raise FormatError(f"{what}: header says {size} signature bytes but {rest} follow")
        return cls(sig_type, algo, key_id, data[SIGNATURE_HEADER_SIZE:])

    def serialize(self) -> bytes:
        header = _HEADER.pack(
            int(self.type), self.version, self.algorithm.id, self.key_id, len(self.signature)
        )
        return header + self.signature


ImaValue = DigestValue | DigestNgValue | HmacValue | SignatureValue

IMA_SIGNATURE_TYPES = frozenset({XattrType.EVM_IMA_XATTR_DIGSIG, XattrType.IMA_VERITY_DIGSIG})
"""The ``security.ima`` value types that are file signatures (0x03 and 0x06)."""


def is_signature(value: bytes | None) -> bool:
    """True when a ``security.ima`` value is a file signature: 0x03 (v2) or 0x06 (v3).

    Judged by the type byte alone, as the kernel does when it fills the ``sig`` template
    field (``ima_eventsig_init``) and keeps signed files immutable; whether the signature
    parses or verifies is another question. The one such test in imaguard.
    """
    return bool(value) and value is not None and value[0] in IMA_SIGNATURE_TYPES


def parse(data: bytes) -> ImaValue:
    """Parse any ``security.ima`` / ``security.evm`` value by its type byte."""
    _need(data, "xattr value")
    kind = data[0]
    if kind == XattrType.IMA_XATTR_DIGEST:
        return DigestValue.parse(data)
    if kind == XattrType.EVM_XATTR_HMAC:
        return HmacValue.parse(data)
    if kind == XattrType.IMA_XATTR_DIGEST_NG:
        return DigestNgValue.parse(data)
    if kind in _SIG_TYPES:
        return SignatureValue.parse(data)
    raise FormatError(f"xattr value: unknown type byte 0x{kind:02x} (known: 0x01-0x06)")


def digest_value(algorithm: HashAlgo, digest: bytes) -> DigestValue | DigestNgValue:
    """The hash value to store for ``algorithm``: 0x01 for md5 and sha1, 0x04 otherwise.

    The kernel's ``ima_fix_xattr`` (security/integrity/ima/ima_appraise.c) writes 0x01 for
    every algorithm id up to ``HASH_ALGO_SHA1`` and 0x04 above it; ``evmctl ima_hash`` does
    the same, so the bytes compare equal. Of those ids, md4 (id 0) is refused here: a
    16-byte 0x01 value reads back as md5 (``ima_get_hash_algo`` tells md5 from sha1 by the
    value's length alone), so an md4 value could never be appraised.
    """
    if len(digest) != algorithm.digest_size:
        raise FormatError(
            f"{algorithm.name} digest must be {algorithm.digest_size} bytes, got {len(digest)}"
        )
    if algorithm.id <= 2:
        if algorithm.name == "md4":
            raise FormatError(
                "md4 digests cannot be stored: a 16-byte 0x01 value reads back as md5"
            )
        return DigestValue(digest)
    return DigestNgValue(algorithm, digest)


def file_id(
    algorithm: HashAlgo, digest: bytes, hash_type: int = XattrType.IMA_VERITY_DIGSIG
) -> bytes:
    """The leading ``2 + digest_size`` bytes of ``struct ima_file_id`` (signed by sigv3)."""
    if len(digest) != algorithm.digest_size or len(digest) > HASH_MAX_DIGESTSIZE:
        raise FormatError(
            f"ima_file_id: {algorithm.name} digest must be {algorithm.digest_size} bytes"
        )
    return bytes([hash_type, algorithm.id]) + digest
