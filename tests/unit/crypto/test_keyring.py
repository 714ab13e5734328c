"""Keyrings: loading trusted certificates, key-id lookup, revocation and blacklists."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import imaguard
from imaguard.crypto import KEY_TYPES, Certificate, Keyring, key_id_from_public_key

CUSTOM_SKID = b"\x01" * 20
CUSTOM_KEY_ID = 0x01010101


def _make_cert(key: ec.EllipticCurvePrivateKey, skid: bytes | None, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if skid is not None:
        builder = builder.add_extension(x509.SubjectKeyIdentifier(skid), critical=False)
    return builder.sign(key, hashes.SHA256())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def custom_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def custom_cert(custom_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return _make_cert(custom_key, CUSTOM_SKID, "custom skid")


def _der_of(keys_dir: dict[str, Path], key_type: str) -> bytes:
    return (keys_dir[key_type] / "cert.der").read_bytes()


# --- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cert.pem", "cert.der"])
def test_load_single_file(keys_dir: dict[str, Path], name: str) -> None:
    path = keys_dir["rsa2048"] / name
    ring = Keyring.load(path)
    assert len(ring) == 1
    (cert,) = ring.certificates
    assert cert.der() == _der_of(keys_dir, "rsa2048")
    assert cert.source == str(path)
    assert ring.lookup(cert.key_id) == (cert,)
    assert ring.name == "_ima"
    assert Keyring.load(str(path)).certificates[0].der() == cert.der()


def test_load_directory_skips_private_key_and_duplicates(keys_dir: dict[str, Path]) -> None:
    d = keys_dir["ecdsa-p256"]
    assert sorted(p.name for p in d.iterdir()) == ["cert.der", "cert.pem", "private.pem"]
    ring = Keyring.load(d)
    assert len(ring) == 1
    assert ring.certificates[0].der() == _der_of(keys_dir, "ecdsa-p256")


def test_load_several_directories(keys_dir: dict[str, Path]) -> None:
    ring = Keyring.load(*(keys_dir[t] for t in KEY_TYPES))
    assert len(ring) == len(KEY_TYPES)
    assert [c.der() for c in ring.certificates] == [_der_of(keys_dir, t) for t in KEY_TYPES]
    for cert in ring.certificates:
        assert ring.lookup(cert.public_key_id) == (cert,)


def test_load_same_thing_twice_counts_once(keys_dir: dict[str, Path]) -> None:
    d = keys_dir["rsa2048"]
    ring = Keyring.load(d, d, d / "cert.der", d / "cert.pem")
    assert len(ring) == 1


def test_load_mixed_files_and_directories(keys_dir: dict[str, Path]) -> None:
    ring = Keyring.load(keys_dir["rsa2048"] / "cert.der", keys_dir["ecdsa-p384"])
    assert len(ring) == 2


def test_load_directory_with_bundle_and_key_plus_cert(
    keys_dir: dict[str, Path], tmp_path: Path
) -> None:
    bundle = (keys_dir["rsa2048"] / "cert.pem").read_bytes() + (
        keys_dir["ecdsa-p256"] / "cert.pem"
    ).read_bytes()
    (tmp_path / "bundle.crt").write_bytes(bundle)
    d = keys_dir["ecdsa-p384"]
    (tmp_path / "signer.pem").write_bytes(
        (d / "private.pem").read_bytes() + (d / "cert.pem").read_bytes()
    )
    ring = Keyring.load(tmp_path)
    assert sorted(c.der() for c in ring.certificates) == sorted(
        _der_of(keys_dir, t) for t in ("rsa2048", "ecdsa-p256", "ecdsa-p384")
    )


@pytest.mark.parametrize("suffix", [".pem", ".der", ".crt", ".cer", ".x509", ".DER", ".Pem"])
def test_directory_certificate_suffixes(
    keys_dir: dict[str, Path], tmp_path: Path, suffix: str
) -> None:
    data = (
        keys_dir["rsa2048"] / ("cert.der" if "der" in suffix.lower() else "cert.pem")
    ).read_bytes()
    (tmp_path / f"trusted{suffix}").write_bytes(data)
    assert len(Keyring.load(tmp_path)) == 1


def test_directory_ignores_other_files(keys_dir: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("not a certificate")
    (tmp_path / "cert.der.bak").write_bytes(b"garbage")
    shutil.copy(keys_dir["rsa2048"] / "cert.der", tmp_path / "a.der")
    (tmp_path / "sub.pem").mkdir()  # a directory with a certificate suffix is not a file
    ring = Keyring.load(tmp_path)
    assert len(ring) == 1


def test_load_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(imaguard.KeyLoadError) as exc:
        Keyring.load(tmp_path)
    assert str(tmp_path) in str(exc.value)
    assert "no certificates" in str(exc.value)


def test_load_directory_with_only_a_private_key(keys_dir: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(keys_dir["rsa2048"] / "private.pem", tmp_path / "private.pem")
    with pytest.raises(imaguard.KeyLoadError, match="no certificates"):
        Keyring.load(tmp_path)


def test_load_directory_with_only_unrelated_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(imaguard.KeyLoadError, match="no certificates"):
        Keyring.load(tmp_path)


def test_load_nonexistent_path(keys_dir: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.der"
    for paths in ((missing,), (keys_dir["rsa2048"], missing)):
        with pytest.raises(imaguard.KeyLoadError) as exc:
            Keyring.load(*paths)
        assert str(missing) in str(exc.value)


def test_load_nothing() -> None:
    with pytest.raises(imaguard.KeyLoadError, match="nothing given"):
        Keyring.load()


def test_load_explicit_private_key_file_is_an_error(keys_dir: dict[str, Path]) -> None:
    path = keys_dir["rsa2048"] / "private.pem"
    with pytest.raises(imaguard.KeyLoadError) as exc:
        Keyring.load(path)
    assert str(path) in str(exc.value)


def test_load_directory_with_garbage_certificate(keys_dir: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(keys_dir["rsa2048"] / "cert.der", tmp_path / "good.der")
    (tmp_path / "bad.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(imaguard.KeyLoadError) as exc:
        Keyring.load(tmp_path)
    assert str(tmp_path / "bad.pem") in str(exc.value)


def test_load_custom_name(keys_dir: dict[str, Path], tmp_path: Path) -> None:
    ring = Keyring.load(keys_dir["rsa2048"], name="_evm")
    assert ring.name == "_evm"
    with pytest.raises(imaguard.KeyLoadError, match="keyring _evm"):
        Keyring.load(tmp_path, name="_evm")


# --- lookup --------------------------------------------------------------------------------------


def test_lookup_custom_skid_by_both_ids(
    tmp_path: Path, custom_key: ec.EllipticCurvePrivateKey, custom_cert: x509.Certificate
) -> None:
    path = tmp_path / "custom.der"
    path.write_bytes(_der(custom_cert))
    ring = Keyring.load(path)
    (cert,) = ring.certificates
    pub_id = key_id_from_public_key(custom_key.public_key())
    assert pub_id != CUSTOM_KEY_ID
    assert ring.lookup(CUSTOM_KEY_ID) == (cert,)  # the kernel's id (SKID)
    assert ring.lookup(pub_id) == (cert,)  # evmctl's id (public key)
    assert ring.lookup(CUSTOM_KEY_ID ^ 1) == ()
    assert ring.lookup(0) == ()


def test_lookup_unknown_key(rsa_ring: Keyring, ec_ring: Keyring) -> None:
    ec_id = ec_ring.certificates[0].key_id
    assert rsa_ring.lookup(ec_id) == ()
    assert ec_ring.lookup(ec_id) == ec_ring.certificates


def test_lookup_returns_every_certificate_with_the_id(
    custom_key: ec.EllipticCurvePrivateKey, custom_cert: x509.Certificate
) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = Certificate(_make_cert(other_key, CUSTOM_SKID, "same skid"))
    mine = Certificate(custom_cert)
    ring = Keyring.of([mine, other])
    assert ring.lookup(CUSTOM_KEY_ID) == (mine, other)
    assert ring.lookup(key_id_from_public_key(other_key.public_key())) == (other,)


def test_keyring_of(rsa_ring: Keyring, ec_ring: Keyring) -> None:
    ring = Keyring.of(rsa_ring.certificates + ec_ring.certificates, name="mine")
    assert len(ring) == 2
    assert ring.name == "mine"
    for cert in ring.certificates:
        assert ring.lookup(cert.key_id) == (cert,)


def test_signature_lookup_end_to_end(
    keys_dir: dict[str, Path], rsa_key: imaguard.PrivateKey, ec_key: imaguard.PrivateKey
) -> None:
    ring = Keyring.load(keys_dir["rsa2048"], keys_dir["ecdsa-p256"])
    sha256 = imaguard.HashAlgo(4, "sha256", 32, "sha256")
    digest = hashlib.sha256(b"content").digest()
    for key in (rsa_key, ec_key):
        sig = key.sign_digest(sha256, digest)
        (cert,) = ring.lookup(key.key_id)
        assert cert.verifies(sha256, digest, sig)


# --- revoke, blacklist, fingerprint --------------------------------------------------------------


def test_revoke_returns_new_keyring(rsa_ring: Keyring) -> None:
    key_id = rsa_ring.certificates[0].key_id
    before = rsa_ring.fingerprint()
    revoked = rsa_ring.revoke(key_id)
    assert revoked is not rsa_ring
    assert revoked.is_revoked(key_id)
    assert not rsa_ring.is_revoked(key_id)
    assert rsa_ring.revoked_key_ids == frozenset()
    assert rsa_ring.fingerprint() == before
    assert revoked.fingerprint() != before
    assert revoked.certificates == rsa_ring.certificates
    assert revoked.name == rsa_ring.name
    # The certificate is still found (so a verifier can say "revoked" rather than "unknown").
    assert revoked.lookup(key_id) == rsa_ring.lookup(key_id)


def test_revoke_several_and_accumulate(rsa_ring: Keyring) -> None:
    once = rsa_ring.revoke(1, 2)
    assert once.revoked_key_ids == {1, 2}
    twice = once.revoke(3)
    assert twice.revoked_key_ids == {1, 2, 3}
    assert once.revoked_key_ids == {1, 2}
    assert not twice.is_revoked(4)


def test_fingerprint_is_deterministic(rsa_ring: Keyring, keys_dir: dict[str, Path]) -> None:
    again = Keyring.load(keys_dir["rsa2048"] / "cert.pem")
    assert again.fingerprint() == rsa_ring.fingerprint()
    assert len(rsa_ring.fingerprint()) == 16
    int(rsa_ring.fingerprint(), 16)  # hex
    assert rsa_ring.revoke(1).revoke(2).fingerprint() == rsa_ring.revoke(2, 1).fingerprint()
    assert rsa_ring.revoke(1).fingerprint() == rsa_ring.revoke(1, 1).fingerprint()
    assert rsa_ring.revoke(1).fingerprint() != rsa_ring.revoke(2).fingerprint()


def test_fingerprint_depends_on_certificates(rsa_ring: Keyring, ec_ring: Keyring) -> None:
    assert rsa_ring.fingerprint() != ec_ring.fingerprint()
    both = Keyring.of(rsa_ring.certificates + ec_ring.certificates)
    assert both.fingerprint() not in {rsa_ring.fingerprint(), ec_ring.fingerprint()}


def test_blacklist_returns_new_keyring(ec_ring: Keyring) -> None:
    bad = hashlib.sha256(b"malware").digest()
    before = ec_ring.fingerprint()
    listed = ec_ring.blacklist(bad)
    assert listed is not ec_ring
    assert listed.is_blacklisted(bad)
    assert listed.is_blacklisted(bytearray(bad))  # type: ignore[arg-type]  # any bytes-like
    assert not listed.is_blacklisted(hashlib.sha256(b"fine").digest())
    assert not ec_ring.is_blacklisted(bad)
    assert ec_ring.blacklisted_digests == frozenset()
    assert ec_ring.fingerprint() == before
    assert listed.fingerprint() != before
    assert listed.certificates == ec_ring.certificates
    assert listed.lookup(ec_ring.certificates[0].key_id) == ec_ring.certificates


def test_blacklist_and_revoke_compose(ec_ring: Keyring) -> None:
    d1, d2 = b"\x01" * 32, b"\x02" * 32
    ring = ec_ring.blacklist(d1).revoke(7).blacklist(bytearray(d2))  # type: ignore[arg-type]
    assert ring.blacklisted_digests == {d1, d2}
    assert ring.revoked_key_ids == {7}
    assert ring.is_blacklisted(d2)
    assert ec_ring.blacklist(d1).fingerprint() != ec_ring.blacklist(d2).fingerprint()


def test_keyring_is_frozen(rsa_ring: Keyring) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        rsa_ring.name = "other"  # type: ignore[misc]
