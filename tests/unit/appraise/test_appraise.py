"""The direct calls: sign_file, store_digest, appraise, verify_file, signature_info.

Verdicts and cause strings follow ima_appraise.c ima_appraise_measurement and xattr_verify.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import imaguard
from helpers import needs_root, needs_root_because
from imaguard import Cause, Status
from imaguard.appraise import _calls as calls
from imaguard.appraise import _files as files
from imaguard.appraise import store_for
from imaguard.formats import SignatureValue, XattrType, by_name

CONTENT = b"#!/bin/sh\necho imaguard\n" * 40
ALGORITHMS = ["sha1", "sha256", "sha384", "sha512"]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    p = tmp_path / "tool"
    p.write_bytes(CONTENT)
    return p


@pytest.fixture(params=["rsa", "ec"])
def key_and_ring(
    request: pytest.FixtureRequest,
) -> tuple[imaguard.PrivateKey, imaguard.Keyring]:
    if request.param == "rsa":
        return request.getfixturevalue("rsa_key"), request.getfixturevalue("rsa_ring")
    return request.getfixturevalue("ec_key"), request.getfixturevalue("ec_ring")


def _stored(path: Path | int, store: imaguard.SignatureStore) -> bytes | None:
    with files.open_target(path) as ref:
        return store.read(ref)


def _set_value(path: Path, value: bytes, attribute: str = "user.ima") -> None:
    os.setxattr(path, attribute, value)


# --- sign, then appraise --------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sign_then_appraise_passes(
    target: Path,
    key_and_ring: tuple[imaguard.PrivateKey, imaguard.Keyring],
    user_store: imaguard.SignatureStore,
    algorithm: str,
) -> None:
    key, ring = key_and_ring
    value = imaguard.sign_file(target, key, algorithm, store=user_store)
    assert value.type == XattrType.EVM_IMA_XATTR_DIGSIG
    assert _stored(target, user_store) == value.serialize()

    v = imaguard.appraise(target, ring, store=user_store)
    assert v.status is Status.PASS
    assert v.passed is True
    assert v.cause is None
    assert v.key_id == key.key_id
    assert v.key_id_hex == f"{key.key_id:08x}"
    assert v.algorithm == algorithm
    assert v.value_type == 0x03
    assert v.digest == hashlib.new(algorithm, CONTENT).digest()
    assert v.target == str(target)


@needs_root
@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_sign_then_appraise_security_ima(
    target: Path,
    key_and_ring: tuple[imaguard.PrivateKey, imaguard.Keyring],
    algorithm: str,
) -> None:
    key, ring = key_and_ring
    value = imaguard.sign_file(target, key, algorithm, store="xattr")
    assert os.getxattr(target, "security.ima") == value.serialize()
    v = imaguard.appraise(target, ring, store="xattr")
    assert v.status is Status.PASS
    assert v.key_id == key.key_id
    assert v.algorithm == algorithm
    # The user.ima store knows nothing of it.
    assert imaguard.appraise(target, ring, store="user-xattr").status is Status.NO_XATTR


def test_store_name_string_and_store_object_agree(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    imaguard.sign_file(target, rsa_key, store="user-xattr")
    assert imaguard.appraise(target, rsa_ring, store=imaguard.XattrStore("user.ima")).passed


def test_keyring_given_as_path(
    target: Path, rsa_key: imaguard.PrivateKey, keys_dir: dict[str, Path]
) -> None:
    imaguard.sign_file(target, rsa_key, store="user-xattr")
    v = imaguard.appraise(target, keys_dir["rsa2048"] / "cert.pem", store="user-xattr")
    assert v.status is Status.PASS


@pytest.mark.parametrize("how", ["append", "same-size"])
def test_tampered_content_fails_invalid_signature(
    target: Path,
    key_and_ring: tuple[imaguard.PrivateKey, imaguard.Keyring],
    user_store: imaguard.SignatureStore,
    how: str,
) -> None:
    key, ring = key_and_ring
    imaguard.sign_file(target, key, "sha256", store=user_store)
    if how == "append":
        with target.open("ab") as f:
            f.write(b"echo pwned\n")
    else:
        data = bytearray(target.read_bytes())
        data[0] ^= 0x01
        target.write_bytes(bytes(data))
    v = imaguard.appraise(target, ring, store=user_store)
    assert v.status is Status.FAIL
    assert v.cause == Cause.INVALID_SIGNATURE == "invalid-signature"
    assert v.key_id == key.key_id
    assert v.passed is False


# --- no value, digest values --------------------------------------------------------


@pytest.mark.parametrize(
    ("require", "cause"),
    [
        ("signature", "IMA-signature-required"),
        ("digest", "missing-hash"),
        ("any", "missing-hash"),
    ],
)
def test_no_value(
    target: Path,
    rsa_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
    require: Any,
    cause: str,
) -> None:
    v = imaguard.appraise(target, rsa_ring, store=user_store, require=require)
    assert v.status is Status.NO_XATTR
    assert v.status == "no-xattr"  # type: ignore[comparison-overlap]  # a StrEnum
    assert v.cause == cause
    assert not v.passed


def test_default_require_is_signature(target: Path, rsa_ring: imaguard.Keyring) -> None:
    v = imaguard.appraise(target, rsa_ring, store="user-xattr")
    assert v.cause == "IMA-signature-required"


@pytest.mark.parametrize(("algorithm", "vtype"), [("sha1", 0x01), ("sha256", 0x04)])
def test_digest_value(
    target: Path,
    rsa_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
    algorithm: str,
    vtype: int,
) -> None:
    value = imaguard.store_digest(target, algorithm, store=user_store)
    raw = _stored(target, user_store)
    assert raw == value.serialize()
    assert raw is not None
    assert raw[0] == vtype
    assert raw.endswith(hashlib.new(algorithm, CONTENT).digest())

    v = imaguard.appraise(target, rsa_ring, store=user_store)
    assert v.status is Status.FAIL
    assert v.cause == "IMA-signature-required"

    for require in ("any", "digest"):
        v = imaguard.appraise(target, rsa_ring, store=user_store, require=require)
        assert v.status is Status.PASS, require
        assert v.cause is None
        assert v.algorithm == algorithm
        assert v.value_type == vtype
        assert v.key_id is None

    with target.open("ab") as f:
        f.write(b"x")
    v = imaguard.appraise(target, rsa_ring, store=user_store, require="any")
    assert v.status is Status.FAIL
    assert v.cause == "invalid-hash"


def test_signature_with_require_digest_is_not_a_pass(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    imaguard.sign_file(target, rsa_key, store="user-xattr")
    v = imaguard.appraise(target, rsa_ring, store="user-xattr", require="digest")
    assert v.status is Status.FAIL
    assert v.cause == "missing-hash"
    assert imaguard.appraise(target, rsa_ring, store="user-xattr", require="any").passed


def test_bad_require_is_a_usage_error(target: Path, rsa_ring: imaguard.Keyring) -> None:
    with pytest.raises(imaguard.UsageError, match="require"):
        imaguard.appraise(target, rsa_ring, require="maybe")  # type: ignore[arg-type]


# --- keys: unknown, revoked; blacklist; allowed algorithms ---------------------------


def test_unknown_key(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
) -> None:
    imaguard.sign_file(target, rsa_key, store=user_store)
    v = imaguard.appraise(target, ec_ring, store=user_store)
    assert v.status is Status.UNKNOWN_KEY
    assert v.status == "unknown-key"  # type: ignore[comparison-overlap]  # a StrEnum
    assert v.cause == "invalid-signature"
    assert v.key_id == rsa_key.key_id
    assert f"{rsa_key.key_id:08x}" in v.detail
    assert not v.passed


def test_wrong_key_with_the_same_key_id_fails(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
) -> None:
    # An RSA signature claiming the EC key's id: found, but it does not verify.
    forged = rsa_key.with_key_id(ec_key.key_id)
    imaguard.sign_file(target, forged, store=user_store)
    v = imaguard.appraise(target, ec_ring, store=user_store)
    assert v.status is Status.FAIL
    assert v.cause == "invalid-signature"


def test_revoked_key_fails(
    target: Path,
    key_and_ring: tuple[imaguard.PrivateKey, imaguard.Keyring],
    user_store: imaguard.SignatureStore,
) -> None:
    key, ring = key_and_ring
    imaguard.sign_file(target, key, store=user_store)
    assert imaguard.appraise(target, ring, store=user_store).passed
    revoked = ring.revoke(key.key_id)
    v = imaguard.appraise(target, revoked, store=user_store)
    assert v.status is Status.FAIL
    assert v.cause == "invalid-signature"
    assert "revoked" in v.detail
    # The original keyring is untouched (keyrings are immutable).
    assert imaguard.appraise(target, ring, store=user_store).passed


def test_blacklisted_digest_fails_even_when_signed(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
) -> None:
    imaguard.sign_file(target, rsa_key, "sha256", store=user_store)
    ring = rsa_ring.blacklist(hashlib.sha256(CONTENT).digest())
    v = imaguard.appraise(target, ring, store=user_store)
    assert v.status is Status.FAIL
    assert v.cause == "blacklisted-hash"
    # Another digest on the blacklist changes nothing.
    other = rsa_ring.blacklist(hashlib.sha256(b"other").digest())
    assert imaguard.appraise(target, other, store=user_store).passed


def test_blacklisted_digest_value_fails(
    target: Path, rsa_ring: imaguard.Keyring, user_store: imaguard.SignatureStore
) -> None:
    imaguard.store_digest(target, "sha256", store=user_store)
    ring = rsa_ring.blacklist(hashlib.sha256(CONTENT).digest())
    v = imaguard.appraise(target, ring, store=user_store, require="any")
    assert v.status is Status.FAIL
    assert v.cause == "blacklisted-hash"


def test_denied_hash_algorithm(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
) -> None:
    imaguard.sign_file(target, rsa_key, "sha256", store=user_store)
    v = imaguard.appraise(target, rsa_ring, store=user_store, algorithms=["sha512"])
    assert v.status is Status.FAIL
    assert v.cause == "denied-hash-algorithm"
    assert v.algorithm == "sha256"
    ok = imaguard.appraise(target, rsa_ring, store=user_store, algorithms=["sha512", "SHA256"])
    assert ok.passed


def test_denied_hash_algorithm_for_digest_values(
    target: Path, rsa_ring: imaguard.Keyring, user_store: imaguard.SignatureStore
) -> None:
    imaguard.store_digest(target, "sha1", store=user_store)
    v = imaguard.appraise(target, rsa_ring, store=user_store, require="any", algorithms=["sha256"])
    assert v.status is Status.FAIL
    assert v.cause == "denied-hash-algorithm"


# --- malformed stored values ----------------------------------------------------------


def _good_value(key: imaguard.PrivateKey, data: bytes = CONTENT) -> bytes:
    return imaguard.sign_bytes(data, key, "sha256").serialize()


def _set_sig_size(raw: bytes, size: int) -> bytes:
    return raw[:7] + struct.pack(">H", size) + raw[9:]


FAIL, UNKNOWN = Status.FAIL, Status.UNKNOWN
BAD_SIG = "invalid-signature"
BAD_VERSION = "invalid-signature-version"
UNKNOWN_DATA = "unknown-ima-data"


def _version(v: int) -> Callable[[bytes], bytes]:
    return lambda r: r[:1] + bytes([v]) + r[2:]


def _type(t: int) -> Callable[[bytes], bytes]:
    return lambda r: bytes([t]) + r[1:]


MALFORMED: list[tuple[str, Callable[[bytes], bytes], Status, str]] = [
    ("sig_size too big", lambda r: _set_sig_size(r, len(r) - 8), FAIL, BAD_SIG),
    ("sig_size too small", lambda r: _set_sig_size(r, len(r) - 10), FAIL, BAD_SIG),
    ("truncated signature", lambda r: r[:-1], FAIL, BAD_SIG),
    ("header only", lambda r: r[:9], FAIL, BAD_SIG),
    ("type byte only", lambda r: r[:1], FAIL, BAD_SIG),
    ("unknown hash algo id", lambda r: r[:2] + b"\x63" + r[3:], FAIL, BAD_SIG),
    ("unknown type 0x09", _type(0x09), UNKNOWN, UNKNOWN_DATA),
    ("type 0xff", _type(0xFF), UNKNOWN, UNKNOWN_DATA),
    ("HMAC 0x02", lambda r: b"\x02" + bytes(20), UNKNOWN, UNKNOWN_DATA),
    ("portable EVM sig 0x05", _type(0x05), UNKNOWN, UNKNOWN_DATA),
    ("version 3 in 0x03", _version(3), FAIL, BAD_VERSION),
    ("version 4 in 0x03", _version(4), FAIL, BAD_VERSION),
    ("version 255 in 0x03", _version(255), FAIL, BAD_VERSION),
    ("garbage signature", lambda r: r[:9] + bytes(len(r) - 9), FAIL, BAD_SIG),
]


# Well-formed on the wire (signature_info decodes them) but not a valid IMA signature.
DECODABLE = {"portable EVM sig 0x05", "garbage signature", "HMAC 0x02"}


@pytest.mark.parametrize(
    ("name", "mutate", "status", "cause"),
    [pytest.param(name, m, s, c, id=name) for name, m, s, c in MALFORMED],
)
def test_malformed_value_gives_documented_verdict(
    name: str,
    target: Path,
    rsa_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    mutate: Callable[[bytes], bytes],
    status: Status,
    cause: str,
) -> None:
    raw = mutate(_good_value(rsa_key))
    # Given directly...
    v = imaguard.appraise(target, rsa_ring, value=raw)
    assert (v.status, v.cause) == (status, cause), v.detail
    assert v.value_type == raw[0]
    # ... and read from the store: the same verdict, never an exception.
    _set_value(target, raw)
    v2 = imaguard.appraise(target, rsa_ring, store="user-xattr")
    assert (v2.status, v2.cause) == (status, cause)
    # signature_info decodes without raising; a value that does not parse is reported.
    info = imaguard.signature_info(target, store="user-xattr")
    assert info.present
    assert info.value_size == len(raw)
    assert info.value_type == raw[0]
    if name in DECODABLE:
        assert info.error is None
    else:
        assert info.error
        assert not info.signed


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\x04\x04" + hashlib.sha256(CONTENT).digest()[:-1], id="0x04 short digest"),
        pytest.param(b"\x04\x63" + hashlib.sha256(CONTENT).digest(), id="0x04 bad algo id"),
        pytest.param(b"\x04", id="0x04 type only"),
        pytest.param(b"\x01" + bytes(10), id="0x01 short"),
    ],
)
def test_malformed_digest_value_is_invalid_hash(
    target: Path, rsa_ring: imaguard.Keyring, value: bytes
) -> None:
    v = imaguard.appraise(target, rsa_ring, value=value, require="any")
    assert v.status is Status.FAIL
    assert v.cause == "invalid-hash"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\x04\x04" + hashlib.sha256(CONTENT).digest()[:-1], id="0x04 short digest"),
        pytest.param(b"\x01" + bytes(10), id="0x01 short"),
    ],
)
def test_malformed_digest_value_under_signature_requirement(
    target: Path, rsa_ring: imaguard.Keyring, value: bytes
) -> None:
    # xattr_verify, 0x04 or 0x01: with a signature required the kernel fails with
    # IMA-signature-required *before* it looks at the digest at all.
    v = imaguard.appraise(target, rsa_ring, value=value)
    assert v.status is Status.FAIL
    assert v.cause == "IMA-signature-required", v.detail


def test_digest_value_with_trailing_bytes_passes(target: Path, rsa_ring: imaguard.Keyring) -> None:
    # xattr_verify: the first digest_len bytes must equal the computed digest; extra
    # trailing bytes are allowed.
    value = b"\x04\x04" + hashlib.sha256(CONTENT).digest() + b"\0\0\0\0"
    v = imaguard.appraise(target, rsa_ring, value=value, require="any")
    assert v.status is Status.PASS, v.detail


def test_md5_padded_digest_value_passes(target: Path, rsa_ring: imaguard.Keyring) -> None:
    value = b"\x01" + hashlib.md5(CONTENT).digest() + b"\0\0\0\0"  # noqa: S324
    v = imaguard.appraise(target, rsa_ring, value=value, require="any")
    assert v.status is Status.PASS
    assert v.algorithm == "md5"


@pytest.mark.parametrize("version", [0, 1])
def test_signature_version_below_three_is_not_a_version_error(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring, version: int
) -> None:
    # xattr_verify: version >= 3 is invalid-signature-version; lower versions go to a verifier
    # (digsig.c: 1 to the legacy one) whose failure is invalid-signature, or UNKNOWN for
    # EOPNOTSUPP.
    raw = _good_value(rsa_key)
    raw = raw[:1] + bytes([version]) + raw[2:]
    v = imaguard.appraise(target, rsa_ring, value=raw)
    assert not v.passed
    assert v.status in (Status.FAIL, Status.UNKNOWN)
    assert v.cause != "invalid-signature-version", v.detail


def test_verity_signature_when_a_signature_is_required(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    # xattr_verify, 0x06: DIGSIG_REQUIRED without VERITY_REQUIRED is IMA-signature-required.
    sig = imaguard.sign_bytes(CONTENT, rsa_key, "sha256")
    raw = SignatureValue(
        XattrType.IMA_VERITY_DIGSIG, sig.algorithm, sig.key_id, sig.signature
    ).serialize()
    v = imaguard.appraise(target, rsa_ring, value=raw)
    assert v.status is Status.FAIL
    assert v.cause == "IMA-signature-required", v.detail


def test_verity_signature_is_never_a_pass(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    sig = imaguard.sign_bytes(CONTENT, rsa_key, "sha256")
    raw = SignatureValue(
        XattrType.IMA_VERITY_DIGSIG, sig.algorithm, sig.key_id, sig.signature
    ).serialize()
    v = imaguard.appraise(target, rsa_ring, value=raw, require="any")
    assert not v.passed


@needs_root
def test_hmac_value_in_security_ima(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    os.setxattr(target, "security.ima", b"\x02" + bytes(20))
    v = imaguard.appraise(target, rsa_ring, store="xattr")
    assert v.status is Status.UNKNOWN
    assert v.cause == "unknown-ima-data"
    info = imaguard.signature_info(target, store="xattr")
    assert info.present
    assert info.type_name == "evm-hmac"
    assert not info.signed


@needs_root
def test_malformed_security_ima_sig_size(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    raw = _good_value(rsa_key)
    os.setxattr(target, "security.ima", _set_sig_size(raw, 1))
    v = imaguard.appraise(target, rsa_ring, store="xattr")
    assert (v.status, v.cause) == (Status.FAIL, "invalid-signature")


# --- targets: path, descriptor, bytes -------------------------------------------------


def test_target_as_str_path_and_pathlike(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    imaguard.sign_file(str(target), rsa_key, store="user-xattr")
    assert imaguard.appraise(str(target), rsa_ring, store="user-xattr").passed
    assert imaguard.appraise(target, rsa_ring, store="user-xattr").passed


def test_target_as_descriptor(
    target: Path,
    key_and_ring: tuple[imaguard.PrivateKey, imaguard.Keyring],
    user_store: imaguard.SignatureStore,
) -> None:
    key, ring = key_and_ring
    fd = os.open(target, os.O_RDONLY)
    try:
        os.lseek(fd, 17, os.SEEK_SET)  # hashing must not depend on the file offset
        value = imaguard.sign_file(fd, key, "sha384", store=user_store)
        v = imaguard.appraise(fd, ring, store=user_store)
        assert v.status is Status.PASS
        assert v.target == f"<fd {fd}>"
        assert v.algorithm == "sha384"
        assert imaguard.hash_file(fd, "sha384").value == hashlib.sha384(CONTENT).digest()
        info = imaguard.signature_info(fd, store=user_store)
        assert info.key_id == key.key_id
        os.fstat(fd)  # still open: the caller's descriptor is not closed
    finally:
        os.close(fd)
    # Written to the file itself, so the path sees it too.
    assert os.getxattr(target, "user.ima") == value.serialize()
    assert imaguard.appraise(target, ring, store=user_store).passed


def test_target_as_bad_descriptor(rsa_ring: imaguard.Keyring, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)
    v = imaguard.appraise(fd, rsa_ring, store="user-xattr")
    assert v.status is Status.UNKNOWN
    assert "descriptor" in v.detail


def test_target_as_directory_descriptor(rsa_ring: imaguard.Keyring, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        v = imaguard.appraise(fd, rsa_ring, store="user-xattr")
    finally:
        os.close(fd)
    assert v.status is Status.UNKNOWN
    assert "directory" in v.detail


def test_target_as_bytes(
    key_and_ring: tuple[imaguard.PrivateKey, imaguard.Keyring],
) -> None:
    key, ring = key_and_ring
    value = imaguard.sign_bytes(CONTENT, key, "sha512").serialize()
    v = imaguard.appraise(CONTENT, ring, value=value)
    assert v.status is Status.PASS
    assert v.target == "<bytes>"
    assert v.key_id == key.key_id
    assert v.algorithm == "sha512"

    bad = imaguard.appraise(CONTENT + b"!", ring, value=value)
    assert (bad.status, bad.cause) == (Status.FAIL, "invalid-signature")

    none = imaguard.appraise(CONTENT, ring)
    assert (none.status, none.cause) == (Status.NO_XATTR, "IMA-signature-required")

    digest = b"\x04\x04" + hashlib.sha256(CONTENT).digest()
    assert imaguard.appraise(CONTENT, ring, value=digest, require="digest").passed
    assert imaguard.hash_file(CONTENT, "sha256").value == hashlib.sha256(CONTENT).digest()


def test_value_overrides_the_store(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    imaguard.sign_file(target, rsa_key, store="user-xattr")
    v = imaguard.appraise(target, rsa_ring, store="user-xattr", value=b"\x09junk")
    assert v.cause == "unknown-ima-data"


def test_sign_bytes_matches_sign_file_header(
    target: Path, rsa_key: imaguard.PrivateKey, user_store: imaguard.SignatureStore
) -> None:
    # RSA PKCS#1 v1.5 is deterministic: the whole value must be the same.
    a = imaguard.sign_file(target, rsa_key, "sha256", store=user_store).serialize()
    b = imaguard.sign_bytes(CONTENT, rsa_key, "sha256").serialize()
    assert a == b
    assert a[:3] == bytes([0x03, 0x02, by_name("sha256").id])
    assert a[3:7] == rsa_key.key_id.to_bytes(4, "big")
    assert int.from_bytes(a[7:9], "big") == len(a) - 9


# --- files that are not regular, or not there -----------------------------------------


def _in_thread(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the call hung (a FIFO must never be opened blocking)"
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_appraise_fifo_does_not_hang(tmp_path: Path, rsa_ring: imaguard.Keyring) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    v = _in_thread(lambda: imaguard.appraise(fifo, rsa_ring, store="user-xattr"))
    assert v.status is Status.UNKNOWN
    assert "FIFO" in v.detail
    assert not v.passed


def test_appraise_fifo_through_symlink_does_not_hang(
    tmp_path: Path, rsa_ring: imaguard.Keyring
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    v = _in_thread(lambda: imaguard.appraise(link, rsa_ring, store="user-xattr"))
    assert v.status is Status.UNKNOWN
    assert "FIFO" in v.detail


def test_sign_and_info_on_fifo_raise_file_error(
    tmp_path: Path, rsa_key: imaguard.PrivateKey
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def sign() -> None:
        imaguard.sign_file(fifo, rsa_key, store="user-xattr")

    with pytest.raises(imaguard.FileError, match="FIFO"):
        _in_thread(sign)
    with pytest.raises(imaguard.FileError, match="FIFO"):
        _in_thread(lambda: imaguard.signature_info(fifo, store="user-xattr"))
    with pytest.raises(imaguard.FileError, match="FIFO"):
        _in_thread(lambda: imaguard.hash_file(fifo))


def test_appraise_socket(tmp_path: Path, rsa_ring: imaguard.Keyring) -> None:
    path = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        v = _in_thread(lambda: imaguard.appraise(path, rsa_ring, store="user-xattr"))
    finally:
        s.close()
    assert v.status is Status.UNKNOWN
    assert v.detail


def test_appraise_character_device(rsa_ring: imaguard.Keyring) -> None:
    v = _in_thread(lambda: imaguard.appraise("/dev/null", rsa_ring, store="user-xattr"))
    assert v.status is Status.UNKNOWN
    assert "character device" in v.detail


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        pytest.param(lambda d: d, "directory", id="directory"),
        pytest.param(lambda d: d / "missing", "No such file", id="missing"),
        pytest.param(lambda d: d / "regular" / "below", "Not a directory", id="under-a-file"),
        pytest.param(lambda d: d / "dangling", "No such file", id="dangling-symlink"),
    ],
)
def test_appraise_unusable_paths(
    tmp_path: Path, rsa_ring: imaguard.Keyring, make: Callable[[Path], Path], needle: str
) -> None:
    (tmp_path / "regular").write_bytes(b"x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    path = make(tmp_path)
    v = imaguard.appraise(path, rsa_ring, store="user-xattr")
    assert v.status is Status.UNKNOWN
    assert needle in v.detail
    assert v.target == str(path)
    assert not v.passed
    with pytest.raises(imaguard.VerificationError):
        imaguard.verify_file(path, rsa_ring, store="user-xattr")


def test_sign_missing_file_raises_file_error(tmp_path: Path, rsa_key: imaguard.PrivateKey) -> None:
    path = tmp_path / "missing"
    with pytest.raises(imaguard.FileError) as exc:
        imaguard.sign_file(path, rsa_key, store="user-xattr")
    assert exc.value.path == str(path)
    assert str(path) in str(exc.value)


# --- verify_file, Verdict -----------------------------------------------------------


def test_verify_file(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
) -> None:
    with pytest.raises(imaguard.VerificationError) as exc:
        imaguard.verify_file(target, rsa_ring, store=user_store)
    verdict = exc.value.verdict
    assert isinstance(verdict, imaguard.Verdict)
    assert verdict.status is Status.NO_XATTR
    assert str(target) in str(exc.value)
    assert "IMA-signature-required" in str(exc.value)

    imaguard.sign_file(target, rsa_key, store=user_store)
    ok = imaguard.verify_file(target, rsa_ring, store=user_store)
    assert isinstance(ok, imaguard.Verdict)
    assert ok.passed

    with target.open("ab") as f:
        f.write(b"!")
    with pytest.raises(imaguard.VerificationError) as exc:
        imaguard.verify_file(target, rsa_ring, store=user_store)
    assert exc.value.verdict.cause == "invalid-signature"  # type: ignore[attr-defined]


def test_verify_file_passes_options_through(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    imaguard.sign_file(target, rsa_key, "sha256", store="user-xattr")
    with pytest.raises(imaguard.VerificationError) as exc:
        imaguard.verify_file(target, rsa_ring, store="user-xattr", algorithms=["sha512"])
    assert exc.value.verdict.cause == "denied-hash-algorithm"  # type: ignore[attr-defined]


def test_verdict_has_no_truth_value(target: Path, rsa_ring: imaguard.Keyring) -> None:
    v = imaguard.appraise(target, rsa_ring, store="user-xattr")
    with pytest.raises(TypeError):
        bool(v)
    with pytest.raises(TypeError):
        _ = "pass" if v else "fail"
    passed = imaguard.Verdict("x", Status.PASS)
    with pytest.raises(TypeError):
        bool(passed)
    with pytest.raises(TypeError):
        _ = not passed


def test_verdict_to_dict_and_describe(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    imaguard.sign_file(target, rsa_key, store="user-xattr")
    with target.open("ab") as f:
        f.write(b"!")
    v = imaguard.appraise(target, rsa_ring, store="user-xattr")
    d = v.to_dict()
    assert d["path"] == str(target)
    assert d["status"] == "fail"
    assert d["cause"] == "invalid-signature"
    assert d["key_id"] == f"{rsa_key.key_id:08x}"
    assert d["algorithm"] == "sha256"
    assert d["type"] == "0x03"
    assert "fail" in v.describe()
    assert "invalid-signature" in v.describe()


# --- signature_info: decode only ------------------------------------------------------


def test_signature_info_does_not_hash(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    user_store: imaguard.SignatureStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    value = imaguard.sign_file(target, rsa_key, "sha384", store=user_store)
    monkeypatch.setattr(files, "hash_fd", _raiser)
    monkeypatch.setattr(calls, "hash_fd", _raiser)
    monkeypatch.setattr(calls, "hash_bytes", _raiser)
    # The patch is effective: anything that hashes now fails.
    with pytest.raises(RuntimeError, match="hashed"):
        imaguard.hash_file(target)
    info = imaguard.signature_info(target, store=user_store)
    assert info.present
    assert info.signed
    assert info.value_type == 0x03
    assert info.type_name == "signature-v2"
    assert info.algorithm == "sha384"
    assert info.key_id == rsa_key.key_id
    assert info.signature_size == len(value.signature)
    assert info.value_size == len(value.serialize())
    assert info.error is None
    assert info.store == "user.ima"
    d = info.to_dict()
    assert d["key_id"] == f"{rsa_key.key_id:08x}"
    assert d["signed"] is True


def _raiser(*_a: object, **_k: object) -> None:
    raise RuntimeError("hashed although it must not")


def test_signature_info_digest_value(
    target: Path, user_store: imaguard.SignatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    imaguard.store_digest(target, "sha256", store=user_store)
    monkeypatch.setattr(files, "hash_fd", _raiser)
    monkeypatch.setattr(calls, "hash_fd", _raiser)
    info = imaguard.signature_info(target, store=user_store)
    assert info.present
    assert not info.signed
    assert info.value_type == 0x04
    assert info.algorithm == "sha256"
    assert info.digest == hashlib.sha256(CONTENT).digest()
    assert info.key_id is None


def test_signature_info_no_value(target: Path, user_store: imaguard.SignatureStore) -> None:
    info = imaguard.signature_info(target, store=user_store)
    assert info.present is False
    assert info.signed is False
    assert info.value_type is None
    assert info.error is None
    assert imaguard.signature_info(CONTENT).present is False


def test_signature_info_malformed(
    target: Path, rsa_key: imaguard.PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "hash_fd", _raiser)
    monkeypatch.setattr(calls, "hash_fd", _raiser)
    raw = _set_sig_size(_good_value(rsa_key), 7)
    _set_value(target, raw)
    info = imaguard.signature_info(target, store="user-xattr")
    assert info.present is True
    assert info.signed is False
    assert info.value_type == 0x03
    assert info.value_size == len(raw)
    assert info.error
    assert "7" in info.error
    given = imaguard.signature_info(target, value=b"\x09\x00")
    assert given.present
    assert given.error
    assert given.store == "given"


# --- files that change while they are hashed; no value corrupted ----------------------


@pytest.fixture
def grow_during_read(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, bytes], None]:
    """Arm: the next preadv in imaguard.appraise._files appends ``extra`` to ``path``."""
    real = os.preadv

    def arm(path: Path, extra: bytes) -> None:
        fired = False

        def preadv(fd: int, buffers: Any, offset: int) -> int:
            nonlocal fired
            n = real(fd, buffers, offset)
            if not fired:
                fired = True
                with path.open("ab") as f:
                    f.write(extra)
            return n

        monkeypatch.setattr(os, "preadv", preadv)

    return arm


def test_file_changed_while_hashing_is_not_signed(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    user_store: imaguard.SignatureStore,
    grow_during_read: Callable[[Path, bytes], None],
) -> None:
    grow_during_read(target, b"appended while hashing\n")
    with pytest.raises(imaguard.FileChangedError) as exc:
        imaguard.sign_file(target, rsa_key, store=user_store)
    assert isinstance(exc.value, imaguard.FileError)
    assert exc.value.path == str(target)
    assert _stored(target, user_store) is None


def test_file_changed_same_size_is_detected(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    user_store: imaguard.SignatureStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = os.preadv
    fired = False

    def preadv(fd: int, buffers: Any, offset: int) -> int:
        nonlocal fired
        n = real(fd, buffers, offset)
        if not fired:
            fired = True
            w = os.open(target, os.O_WRONLY)
            try:
                os.pwrite(w, b"X" * 8, 0)
            finally:
                os.close(w)
        return n

    old = 1_000_000_000
    os.utime(target, (old, old))
    monkeypatch.setattr(os, "preadv", preadv)
    with pytest.raises(imaguard.FileChangedError):
        imaguard.store_digest(target, "sha256", store=user_store)
    assert _stored(target, user_store) is None


def test_file_changed_while_appraising_is_never_a_pass(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
    grow_during_read: Callable[[Path, bytes], None],
) -> None:
    imaguard.sign_file(target, rsa_key, store=user_store)
    grow_during_read(target, b"more")
    v = imaguard.appraise(target, rsa_ring, store=user_store)
    assert v.status is Status.UNKNOWN
    assert "changed" in v.detail


@pytest.mark.parametrize(
    "store_name",
    ["user-xattr", pytest.param("xattr", marks=needs_root), "sigfile"],
)
def test_failed_resign_keeps_the_first_signature(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    ec_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    grow_during_read: Callable[[Path, bytes], None],
    store_name: str,
) -> None:
    first = imaguard.sign_file(target, rsa_key, "sha256", store=store_name).serialize()
    store = store_for(store_name)
    grow_during_read(target, b"appended")
    with pytest.raises(imaguard.FileChangedError):
        imaguard.sign_file(target, ec_key, "sha512", store=store_name)
    with target.open("r+b") as f:  # undo the append: the content is the signed one again
        f.truncate(len(CONTENT))
    assert _stored(target, store) == first
    v = imaguard.appraise(target, rsa_ring, store=store_name)
    assert v.status is Status.PASS
    assert v.key_id == rsa_key.key_id


def test_failed_sidecar_write_keeps_the_first_signature(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    ec_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = imaguard.SidecarStore()
    first = imaguard.sign_file(target, rsa_key, store=store).serialize()

    # Make the final rename fail: the write must fail without touching FILE.sig and
    # without leaving its temporary file behind.
    def refuse(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(imaguard.StoreError) as exc:
        imaguard.sign_file(target, ec_key, "sha512", store=store)
    monkeypatch.undo()
    assert f"{target}.sig" in str(exc.value)
    assert Path(f"{target}.sig").read_bytes() == first
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(
        [target.name, f"{target.name}.sig"]
    )
    assert imaguard.appraise(target, rsa_ring, store=store).passed


@pytest.mark.skipif(shutil.which("chattr") is None, reason="chattr (e2fsprogs) is not installed")
@needs_root_because("chattr +i needs root")
def test_failed_xattr_write_keeps_the_first_signature(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    ec_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
) -> None:
    first = imaguard.sign_file(target, rsa_key, store=user_store).serialize()
    r = subprocess.run(["chattr", "+i", str(target)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"this filesystem has no immutable flag: {r.stderr!r}")
    try:
        with pytest.raises(imaguard.StoreError) as exc:
            imaguard.sign_file(target, ec_key, store=user_store)
        assert str(target) in str(exc.value)
        assert _stored(target, user_store) == first
        assert imaguard.appraise(target, rsa_ring, store=user_store).passed
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)


def test_signing_twice_replaces_the_value(
    target: Path,
    rsa_key: imaguard.PrivateKey,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    user_store: imaguard.SignatureStore,
) -> None:
    imaguard.sign_file(target, rsa_key, store=user_store)
    second = imaguard.sign_file(target, ec_key, "sha384", store=user_store)
    assert _stored(target, user_store) == second.serialize()
    v = imaguard.appraise(target, ec_ring, store=user_store)
    assert v.passed
    assert v.algorithm == "sha384"


# --- hash_file, algorithms ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"])
def test_hash_file_matches_hashlib(target: Path, algorithm: str) -> None:
    d = imaguard.hash_file(target, algorithm)
    assert d.value == hashlib.new(algorithm, CONTENT).digest()
    assert d.hex == d.value.hex()
    assert d.size == len(CONTENT)
    assert d.algorithm.name == algorithm


def test_hash_file_large_file_spans_buffers(tmp_path: Path) -> None:
    data = os.urandom(files.BUFFER_SIZE * 2 + 12345)
    p = tmp_path / "big"
    p.write_bytes(data)
    assert imaguard.hash_file(p, "sha256").value == hashlib.sha256(data).digest()


def test_empty_file_signs_and_verifies(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    imaguard.sign_file(p, rsa_key, store="user-xattr")
    assert imaguard.appraise(p, rsa_ring, store="user-xattr").passed


def test_unknown_algorithm_is_an_imaguard_error(target: Path, rsa_key: imaguard.PrivateKey) -> None:
    with pytest.raises(imaguard.Error):
        imaguard.sign_file(target, rsa_key, "sha999", store="user-xattr")
    with pytest.raises(imaguard.Error):
        imaguard.hash_file(target, "nope")
    assert _stored(target, imaguard.XattrStore("user.ima")) is None
