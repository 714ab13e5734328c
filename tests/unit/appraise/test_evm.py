"""EVM: security.evm HMACs and signatures (evm/evm_crypto.c), checked independently and
against evmctl (ima-evm-utils 1.4) as an oracle."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import shutil
import struct
import subprocess
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

import imaguard
from helpers import needs_root
from helpers.core import EVM, IMA, TIMEOUT, run_sub, xattr
from imaguard.appraise._evm import evm_data, evm_hmac, evm_verify, sign_file_evm
from imaguard.appraise._files import open_target

pytestmark = needs_root

KEY = b"0123456789abcdef0123456789abcdef"  # a 32-byte EVM HMAC key
UUID = uuidlib.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
# The kernel's protected xattrs, in hashing order (evm_main.c), written out here on purpose.
ORDER = (
    "security.selinux",
    "security.SMACK64",
    "security.SMACK64EXEC",
    "security.SMACK64TRANSMUTE",
    "security.SMACK64MMAP",
    "security.apparmor",
    "security.ima",
    "security.capability",
)
# A valid vfs_cap_data v2 (cap_net_bind_service, effective): 20 bytes.
CAPS = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
FS_IOC_GETVERSION = 0x80087601


def _generation(path: Path) -> int:
    buf = bytearray(8)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_GETVERSION, buf)
    finally:
        os.close(fd)
    return int.from_bytes(buf[:4], "little")


def expected_data(path: Path, *, portable: bool, fs_uuid: bytes | None) -> bytes:
    """What security.evm covers, computed without imaguard (evm_calc_hmac_or_hash)."""
    st = os.stat(path)
    parts = [v for v in (xattr(path, n) for n in ORDER) if v is not None]
    ino, gen = (0, 0) if portable else (st.st_ino, _generation(path))
    parts.append(struct.pack("<QIIIHxx", ino, gen, st.st_uid, st.st_gid, st.st_mode & 0xFFFF))
    if fs_uuid is not None:
        parts.append(fs_uuid)
    return b"".join(parts)


def verify_with_cert(cert_der: Path, value: bytes, data: bytes) -> None:
    """Check a 0x03/0x05 value with the certificate's public key (cryptography, not imaguard)."""
    assert value[1] == 2  # v2 header
    assert value[2] == 4  # sha256
    size = int.from_bytes(value[7:9], "big")
    sig = value[9:]
    assert len(sig) == size
    digest = hashlib.sha256(data).digest()
    pub = x509.load_der_x509_certificate(cert_der.read_bytes()).public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(sig, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def status(path: Path, **kw: object) -> str:
    with open_target(path) as ref:
        return evm_verify(ref, **kw).status  # type: ignore[arg-type]


# -- HMAC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_caps", [False, True], ids=["ima", "ima+capability"])
def test_hmac_matches_an_independent_computation(signed: Path, with_caps: bool) -> None:
    if with_caps:
        os.setxattr(signed, "security.capability", CAPS)
    value = sign_file_evm(signed, hmac_key=KEY, fs_uuid=UUID.bytes)
    assert xattr(signed, EVM) == value
    data = expected_data(signed, portable=False, fs_uuid=UUID.bytes)
    padded = KEY.ljust(128, b"\0")
    mac = hmac.new(padded, data, hashlib.sha1).digest()
    assert value == b"\x02" + mac
    # evm_crypto.c: 128 bytes exceed SHA-1's block, so the effective key is SHA1(pad128(key)).
    effective = hashlib.sha1(padded).digest()  # noqa: S324 - EVM's HMAC is HMAC-SHA1
    assert mac == hmac.new(effective, data, hashlib.sha1).digest()
    # ... which differs from keying HMAC with the bare 32-byte key (padded to 64 by HMAC).
    assert mac != hmac.new(KEY, data, hashlib.sha1).digest()
    assert status(signed, hmac_key=KEY, fs_uuid=UUID.bytes) == "pass"
    assert status(signed, hmac_key=b"another key", fs_uuid=UUID.bytes) == "fail"
    assert status(signed, hmac_key=KEY, fs_uuid=bytes(16)) == "fail"


@pytest.mark.parametrize("change", ["chmod", "chown", "chgrp", "security.ima", "capability"])
def test_hmac_fails_after_a_metadata_change(
    signed: Path, rsa_key: imaguard.PrivateKey, change: str
) -> None:
    sign_file_evm(signed, hmac_key=KEY, fs_uuid=UUID.bytes)
    assert status(signed, hmac_key=KEY, fs_uuid=UUID.bytes) == "pass"
    _change(signed, change, rsa_key)
    with open_target(signed) as ref:
        r = evm_verify(ref, hmac_key=KEY, fs_uuid=UUID.bytes)
    assert (r.status, r.cause) == ("fail", "invalid-HMAC")


def _change(path: Path, change: str, key: imaguard.PrivateKey) -> None:
    if change == "chmod":
        os.chmod(path, 0o4755)  # noqa: S103 - a metadata change
    elif change == "chown":
        os.chown(path, 1234, -1)
    elif change == "chgrp":
        os.chown(path, -1, 1234)
    elif change == "security.ima":
        os.setxattr(path, IMA, imaguard.sign_bytes(b"other content", key).serialize())
    elif change == "capability":
        os.setxattr(path, "security.capability", CAPS)
    else:  # pragma: no cover
        raise AssertionError(change)


def test_missing_security_evm_is_no_label_or_no_xattrs(
    signed: Path, make_file: Callable[..., Path]
) -> None:
    with open_target(signed) as ref:
        r = evm_verify(ref, hmac_key=KEY, fs_uuid=UUID.bytes)
    assert (r.status, r.cause) == ("no_label", "missing-HMAC")
    with open_target(make_file("bare")) as ref:
        r = evm_verify(ref, hmac_key=KEY, fs_uuid=UUID.bytes)
    assert (r.status, r.cause) == ("no_xattrs", "missing-HMAC")


# -- signatures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
def test_portable_signature_round_trip(
    signed: Path, keys_dir: dict[str, Path], key_type: str
) -> None:
    key = imaguard.load_private_key(keys_dir[key_type] / "private.pem")
    ring = imaguard.Keyring.load(keys_dir[key_type] / "cert.der")
    value = sign_file_evm(signed, key=key, portable=True)
    assert value[0] == 0x05
    assert int.from_bytes(value[3:7], "big") == key.key_id
    verify_with_cert(
        keys_dir[key_type] / "cert.der", value, expected_data(signed, portable=True, fs_uuid=None)
    )
    assert status(signed, keyring=ring) == "pass_immutable"
    # Portable: no inode number, generation or fs UUID - a copy with the same metadata verifies.
    copy = signed.with_name("copy")
    shutil.copyfile(signed, copy)
    os.chmod(copy, os.stat(signed).st_mode)
    for name in (IMA, EVM):
        os.setxattr(copy, name, xattr(signed, name) or b"")
    assert status(copy, keyring=ring) == "pass_immutable"


def test_non_portable_signature_round_trip_with_a_given_uuid(
    signed: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring, rsa_dir: Path
) -> None:
    value = sign_file_evm(signed, key=rsa_key, portable=False, fs_uuid=UUID.bytes)
    assert value[0] == 0x03
    verify_with_cert(
        rsa_dir / "cert.der", value, expected_data(signed, portable=False, fs_uuid=UUID.bytes)
    )
    assert status(signed, keyring=rsa_ring, fs_uuid=UUID.bytes) == "pass"
    assert status(signed, keyring=rsa_ring, fs_uuid=bytes(16)) == "fail"
    with pytest.raises(imaguard.UsageError):
        sign_file_evm(signed, key=rsa_key, portable=False)  # the UUID is needed


def test_signature_by_an_unknown_key_fails(
    signed: Path, rsa_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    sign_file_evm(signed, key=rsa_key, portable=True)
    with open_target(signed) as ref:
        r = evm_verify(ref, keyring=ec_ring)
    assert r.passed is False
    assert r.status == "fail_immutable"


@pytest.mark.parametrize("change", ["chmod", "chown", "chgrp", "security.ima", "capability"])
def test_portable_signature_fails_after_a_metadata_change(
    signed: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring, change: str
) -> None:
    sign_file_evm(signed, key=rsa_key, portable=True)
    _change(signed, change, rsa_key)
    with open_target(signed) as ref:
        r = evm_verify(ref, keyring=rsa_ring)
    assert (r.status, r.cause) == ("fail_immutable", "invalid-fail-immutable")


@pytest.mark.parametrize("change", ["chmod", "chown", "security.ima"])
def test_non_portable_signature_fails_after_a_metadata_change(
    signed: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring, change: str
) -> None:
    sign_file_evm(signed, key=rsa_key, portable=False, fs_uuid=UUID.bytes)
    _change(signed, change, rsa_key)
    assert status(signed, keyring=rsa_ring, fs_uuid=UUID.bytes) == "fail"


def test_portable_signature_needs_security_ima(
    make_file: Callable[..., Path], rsa_key: imaguard.PrivateKey
) -> None:
    with pytest.raises(imaguard.UsageError):
        sign_file_evm(make_file(), key=rsa_key, portable=True)


# -- evmctl as an oracle ------------------------------------------------------------------------


def evmctl(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("evmctl")
    if exe is None:
        pytest.fail("evmctl is not installed (apt-get install ima-evm-utils)")
    return subprocess.run(
        [exe, *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.interop
@pytest.mark.parametrize("ima_signer", ["evmctl", "imaguard"])
@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
def test_evmctl_portable_signature_is_verified_by_imaguard(
    make_file: Callable[..., Path], keys_dir: dict[str, Path], ima_signer: str, key_type: str
) -> None:
    kd = keys_dir[key_type]
    f = make_file()
    if ima_signer == "evmctl":
        r = evmctl("ima_sign", "--key", kd / "private.pem", f)
        assert r.returncode == 0, r.stderr
    else:
        imaguard.sign_file(f, imaguard.load_private_key(kd / "private.pem"))
    r = evmctl("sign", "--portable", "--key", kd / "private.pem", f)
    assert r.returncode == 0, r.stderr
    assert (xattr(f, EVM) or b"")[:1] == b"\x05"
    v = run_sub("evm", "verify", "--cert", kd / "cert.der", f)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "pass_immutable" in v.stdout
    os.chmod(f, 0o600)
    v = run_sub("evm", "verify", "--cert", kd / "cert.der", f)
    assert v.returncode == 1
    assert "invalid-fail-immutable" in v.stdout


@pytest.mark.interop
@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
def test_imaguard_evm_signature_is_verified_by_evmctl(
    signed: Path, keys_dir: dict[str, Path], key_type: str
) -> None:
    kd = keys_dir[key_type]
    r = run_sub("evm", "sign", "--key", kd / "private.pem", signed)
    assert r.returncode == 0, r.stderr
    v = evmctl("verify", "--key", kd / "cert.der", signed)
    assert v.returncode == 0, v.stderr
    assert "verification is OK" in v.stderr
    os.chown(signed, 4321, -1)
    v = evmctl("verify", "--key", kd / "cert.der", signed)
    assert v.returncode != 0
    assert "verification is OK" not in v.stderr


EVM_KEY_PLAIN = Path("/etc/keys/evm-key-plain")


@pytest.fixture
def evm_key_plain() -> Iterator[bytes]:
    """evmctl 1.4 reads the HMAC key only from /etc/keys/evm-key-plain: put one there for the
    test and remove exactly what was created afterwards."""
    if EVM_KEY_PLAIN.exists():
        pytest.skip(f"{EVM_KEY_PLAIN} already exists; not touching a real EVM key")
    created_dir = not EVM_KEY_PLAIN.parent.exists()
    EVM_KEY_PLAIN.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(EVM_KEY_PLAIN, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, KEY)
    finally:
        os.close(fd)
    try:
        yield KEY
    finally:
        EVM_KEY_PLAIN.unlink(missing_ok=True)
        if created_dir:
            EVM_KEY_PLAIN.parent.rmdir()


@pytest.mark.interop
@pytest.mark.parametrize("with_caps", [False, True], ids=["ima", "ima+capability"])
def test_evmctl_hmac_matches_imaguard_hmac_core(
    signed: Path, evm_key_plain: bytes, with_caps: bool
) -> None:
    # evmctl 1.4 computes the HMAC (forced to sha1 with -a sha1; its default is sha256,
    # which the kernel never uses) over the xattrs and h_misc but NOT the fs UUID ("HMAC
    # version 1"), while the kernel's default (EVM_ATTR_FSUUID) and imaguard append it. So
    # the oracle checks the shared core - key padding, xattr order, h_misc layout - by
    # computing imaguard's HMAC over the same data with an empty UUID.
    if with_caps:
        os.setxattr(signed, "security.capability", CAPS)
    r = evmctl("-a", "sha1", "hmac", signed)
    assert r.returncode == 0, r.stderr
    theirs = xattr(signed, EVM)
    assert theirs is not None
    assert len(theirs) == 21
    with open_target(signed) as ref:
        ours = evm_hmac(evm_data(ref.fd, ref.st, portable=False, fs_uuid=b""), evm_key_plain)
    assert ours.serialize() == theirs
    assert (
        theirs
        == b"\x02"
        + hmac.new(
            evm_key_plain.ljust(128, b"\0"),
            expected_data(signed, portable=False, fs_uuid=None),
            hashlib.sha1,
        ).digest()
    )
