"""Private keys, certificates, key ids, signing and key generation (imaguard.crypto)."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import imaguard
from imaguard.crypto import KEY_TYPES, PASSWORD_ENV, key_id_from_public_key
from imaguard.crypto._keys import Certificate, PrivateKey, load_certificates, load_private_key
from imaguard.formats.hashalgo import by_name

SIGN_ALGOS = ("sha1", "sha256", "sha384", "sha512")
PASSWORD = "correct horse battery staple"

# RFC 8017 §9.2, note 1: DER DigestInfo prefixes for EMSA-PKCS1-v1_5.
DIGEST_INFO = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}

PrivKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in the caller's environment must not leak into these tests."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


@pytest.fixture(scope="module")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl command is not installed (make test installs it)")
    return path


def _run_openssl(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(
        ["openssl", *args], input=data, capture_output=True, check=True, timeout=30
    ).stdout


def _der_tlv(buf: bytes, off: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER element at ``off``."""
    tag = buf[off]
    length = buf[off + 1]
    off += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(buf[off : off + n], "big")
        off += n
    return tag, off, off + length


def _spki_bit_string(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING contents of a DER SubjectPublicKeyInfo."""
    tag, start, _ = _der_tlv(spki, 0)
    assert tag == 0x30
    tag, _, algid_end = _der_tlv(spki, start)
    assert tag == 0x30
    tag, bs_start, bs_end = _der_tlv(spki, algid_end)
    assert tag == 0x03
    assert spki[bs_start] == 0  # no unused bits
    return spki[bs_start + 1 : bs_end]


def _openssl_public_key_id(cert_pem: Path) -> int:
    """evmctl's key id, computed with the openssl command only (libimaevm.c calc_keyid_v2)."""
    pub = _run_openssl("x509", "-in", str(cert_pem), "-noout", "-pubkey")
    if b"BEGIN PUBLIC KEY" in pub and _is_rsa_cert(cert_pem):
        raw = _run_openssl("rsa", "-pubin", "-RSAPublicKey_out", "-outform", "DER", data=pub)
        # The RSAPublicKey is exactly what the SPKI BIT STRING holds.
        spki = _run_openssl("pkey", "-pubin", "-outform", "DER", data=pub)
        assert _spki_bit_string(spki) == raw
    else:
        spki = _run_openssl(
            "ec", "-pubin", "-conv_form", "uncompressed", "-outform", "DER", data=pub
        )
        raw = _spki_bit_string(spki)
        assert raw[0] == 0x04  # uncompressed point 04 || X || Y
    return int.from_bytes(hashlib.sha1(raw).digest()[-4:], "big")  # noqa: S324 - a key id


def _is_rsa_cert(cert_pem: Path) -> bool:
    text = _run_openssl("x509", "-in", str(cert_pem), "-noout", "-text")
    return b"rsaEncryption" in text


def _openssl_skid(cert_pem: Path) -> bytes:
    out = _run_openssl("x509", "-in", str(cert_pem), "-noout", "-ext", "subjectKeyIdentifier")
    lines = [ln.strip() for ln in out.decode().splitlines() if ln.strip()]
    assert lines[0].startswith("X509v3 Subject Key Identifier")
    return bytes.fromhex(lines[-1].replace(":", ""))


_KEY_CACHE: dict[Path, PrivKey] = {}


def _crypto_key(keys_dir: dict[str, Path], key_type: str) -> PrivKey:
    """The pyca key behind keys_dir[key_type], loaded once (RSA key checks are slow)."""
    path = keys_dir[key_type] / "private.pem"
    if path not in _KEY_CACHE:
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
        assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        _KEY_CACHE[path] = key
    return _KEY_CACHE[path]


def _make_cert(
    key: PrivKey | ed25519.Ed25519PrivateKey,
    skid: bytes | None = None,
    cn: str = "test certificate",
) -> x509.Certificate:
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
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- key material made once per module -----------------------------------------------------------


@pytest.fixture(scope="module")
def rsa1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused


@pytest.fixture(scope="module")
def signers(keys_dir: dict[str, Path]) -> dict[str, PrivateKey]:
    return {t: load_private_key(keys_dir[t] / "private.pem") for t in KEY_TYPES}


@pytest.fixture(scope="module")
def certs(keys_dir: dict[str, Path]) -> dict[str, Certificate]:
    out = {}
    for t in KEY_TYPES:
        (cert,) = load_certificates(keys_dir[t] / "cert.der")
        out[t] = cert
    return out


# --- load_private_key: formats -------------------------------------------------------------------

FORMATS: dict[str, tuple[serialization.Encoding, serialization.PrivateFormat]] = {
    "pem-pkcs8": (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8),
    "pem-traditional": (serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL),
    "der-pkcs8": (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8),
    "der-traditional": (serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_load_private_key_formats(
    keys_dir: dict[str, Path], tmp_path: Path, key_type: str, fmt: str
) -> None:
    key = _crypto_key(keys_dir, key_type)
    encoding, private_format = FORMATS[fmt]
    data = key.private_bytes(encoding, private_format, serialization.NoEncryption())
    if fmt == "pem-traditional":
        marker = b"RSA PRIVATE KEY" if key_type.startswith("rsa") else b"EC PRIVATE KEY"
        assert data.startswith(b"-----BEGIN " + marker)
    elif fmt == "pem-pkcs8":
        assert data.startswith(b"-----BEGIN PRIVATE KEY-----")
    path = _write(tmp_path / f"key.{fmt}", data)

    loaded = load_private_key(path)
    assert loaded.key.private_numbers() == key.private_numbers()
    assert loaded.source == str(path)
    assert loaded.certificate is None
    assert loaded.key_id == key_id_from_public_key(key.public_key())


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_load_private_key_from_str_path_and_bytes(
    keys_dir: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    key = _crypto_key(keys_dir, "ecdsa-p256")
    encoding, private_format = FORMATS[fmt]
    data = key.private_bytes(encoding, private_format, serialization.NoEncryption())
    path = _write(tmp_path / "key", data)
    from_str = load_private_key(str(path))
    assert from_str.source == str(path)
    assert from_str.key.private_numbers() == key.private_numbers()
    from_bytes = load_private_key(data)
    assert from_bytes.key.private_numbers() == key.private_numbers()
    assert from_bytes.source == "<private key bytes>"


@pytest.mark.parametrize(
    ("key_type", "description"),
    [
        ("rsa2048", "RSA-2048"),
        ("rsa3072", "RSA-3072"),
        ("rsa4096", "RSA-4096"),
        ("ecdsa-p256", "ECDSA P-256"),
        ("ecdsa-p384", "ECDSA P-384"),
    ],
)
def test_private_key_description(
    signers: dict[str, PrivateKey], key_type: str, description: str
) -> None:
    assert signers[key_type].description == description


# --- load_private_key: passwords -----------------------------------------------------------------


@pytest.fixture(scope="module", params=["rsa2048", "ecdsa-p256"])
def enc_key(request: pytest.FixtureRequest, keys_dir: dict[str, Path]) -> PrivKey:
    return _crypto_key(keys_dir, request.param)


def _encrypted(key: PrivKey, fmt: str = "pem-pkcs8") -> bytes:
    encoding, private_format = FORMATS[fmt]
    return key.private_bytes(
        encoding, private_format, serialization.BestAvailableEncryption(PASSWORD.encode())
    )


@pytest.mark.parametrize("fmt", ["pem-pkcs8", "pem-traditional", "der-pkcs8"])
def test_encrypted_key_with_right_password(enc_key: PrivKey, tmp_path: Path, fmt: str) -> None:
    data = _encrypted(enc_key, fmt)
    if fmt == "pem-pkcs8":
        assert b"BEGIN ENCRYPTED PRIVATE KEY" in data
    path = _write(tmp_path / "enc.key", data)
    for pw in (PASSWORD, PASSWORD.encode()):
        loaded = load_private_key(path, pw)
        assert loaded.key.private_numbers() == enc_key.private_numbers()


def test_encrypted_key_password_from_env(
    enc_key: PrivKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "enc.pem", _encrypted(enc_key))
    monkeypatch.setenv("IMAGUARD_KEY_PASSWORD", PASSWORD)
    loaded = load_private_key(path)
    assert loaded.key.private_numbers() == enc_key.private_numbers()


def test_explicit_password_wins_over_env(
    enc_key: PrivKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "enc.pem", _encrypted(enc_key))
    monkeypatch.setenv("IMAGUARD_KEY_PASSWORD", "not the password")
    loaded = load_private_key(path, PASSWORD)
    assert loaded.key.private_numbers() == enc_key.private_numbers()


@pytest.mark.parametrize("fmt", ["pem-pkcs8", "pem-traditional"])
def test_encrypted_key_wrong_password(enc_key: PrivKey, tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / "enc.pem", _encrypted(enc_key, fmt))
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_private_key(path, "wrong")
    assert str(path) in str(exc.value)
    assert "wrong password" in str(exc.value)


def test_encrypted_der_key_wrong_password(enc_key: PrivKey, tmp_path: Path) -> None:
    path = _write(tmp_path / "enc.der", _encrypted(enc_key, "der-pkcs8"))
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_private_key(path, "wrong")
    assert str(path) in str(exc.value)
    assert "password" in str(exc.value).lower()


def test_encrypted_key_wrong_password_from_env(
    enc_key: PrivKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "enc.pem", _encrypted(enc_key))
    monkeypatch.setenv("IMAGUARD_KEY_PASSWORD", "wrong")
    with pytest.raises(imaguard.KeyLoadError, match="wrong password") as exc:
        load_private_key(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("fmt", ["pem-pkcs8", "pem-traditional", "der-pkcs8"])
def test_encrypted_key_missing_password(enc_key: PrivKey, tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / "enc.key", _encrypted(enc_key, fmt))
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_private_key(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "encrypted" in msg
    assert "IMAGUARD_KEY_PASSWORD" in msg


def test_empty_env_password_counts_as_missing(
    enc_key: PrivKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "enc.pem", _encrypted(enc_key))
    monkeypatch.setenv("IMAGUARD_KEY_PASSWORD", "")
    with pytest.raises(imaguard.KeyLoadError, match="encrypted"):
        load_private_key(path)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_password_for_unencrypted_key(enc_key: PrivKey, tmp_path: Path, fmt: str) -> None:
    encoding, private_format = FORMATS[fmt]
    data = enc_key.private_bytes(encoding, private_format, serialization.NoEncryption())
    path = _write(tmp_path / "plain.key", data)
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_private_key(path, PASSWORD)
    assert str(path) in str(exc.value)
    assert "not encrypted" in str(exc.value)


# --- load_private_key: refused keys and bad files ------------------------------------------------


@pytest.fixture(scope="module")
def refused_keys(rsa1024: rsa.RSAPrivateKey) -> dict[str, tuple[object, str]]:
    """Keys imaguard must refuse, and the word the error must use to name the problem."""
    return {
        "rsa1024": (rsa1024, "1024"),
        "p521": (ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
        "p192": (ec.generate_private_key(ec.SECP192R1()), "secp192r1"),
        "secp256k1": (ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
        "ed25519": (ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
        "x25519": (x25519.X25519PrivateKey.generate(), "X25519"),
        "dsa": (dsa.generate_private_key(key_size=1024), "DSA"),  # noqa: S505 - must be refused
    }


@pytest.mark.parametrize(
    "which", ["rsa1024", "p521", "p192", "secp256k1", "ed25519", "x25519", "dsa"]
)
@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_refused_private_keys(
    refused_keys: dict[str, tuple[object, str]],
    tmp_path: Path,
    which: str,
    encoding: serialization.Encoding,
) -> None:
    key, problem = refused_keys[which]
    data = key.private_bytes(  # type: ignore[attr-defined]
        encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = _write(tmp_path / "refused.key", data)
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_private_key(path)
    assert str(path) in str(exc.value)
    assert problem in str(exc.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage, not a key\n",
        b"\x00\x01\x02\x03" * 64,
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN FOO-----\n-----END FOO-----\n",
    ],
    ids=["empty", "text", "binary", "bad-pem-body", "foreign-pem"],
)
def test_bad_key_files(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path / "bad.pem", content)
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_private_key(path)
    assert str(path) in str(exc.value)


def test_certificate_is_not_a_private_key(keys_dir: dict[str, Path]) -> None:
    for name in ("cert.pem", "cert.der"):
        path = keys_dir["rsa2048"] / name
        with pytest.raises(imaguard.KeyLoadError) as exc:
            load_private_key(path)
        assert str(path) in str(exc.value)


def test_missing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "does-not-exist.pem"
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_private_key(path)
    assert str(path) in str(exc.value)


def test_key_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_private_key(tmp_path)
    assert str(tmp_path) in str(exc.value)


def test_load_errors_are_imaguard_errors(tmp_path: Path) -> None:
    with pytest.raises(imaguard.Error):
        load_private_key(tmp_path / "nope")


# --- key with a certificate appended -------------------------------------------------------------


CUSTOM_SKID = b"\x01" * 20
CUSTOM_KEY_ID = 0x01010101


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
@pytest.mark.parametrize("cert_first", [False, True])
def test_key_file_with_custom_skid_cert_appended(
    keys_dir: dict[str, Path], tmp_path: Path, key_type: str, cert_first: bool
) -> None:
    key = _crypto_key(keys_dir, key_type)
    cert = _make_cert(key, CUSTOM_SKID)
    key_pem = (keys_dir[key_type] / "private.pem").read_bytes()
    parts = [_pem(cert), key_pem] if cert_first else [key_pem, _pem(cert)]
    path = _write(tmp_path / "key+cert.pem", b"".join(parts))

    loaded = load_private_key(path)
    assert loaded.certificate is not None
    assert loaded.certificate.x509 == cert
    assert loaded.certificate.source == str(path)
    assert loaded.key_id == CUSTOM_KEY_ID
    assert loaded.key_id != key_id_from_public_key(key.public_key())


def test_key_file_with_generated_cert_appended_uses_skid(
    keys_dir: dict[str, Path], tmp_path: Path
) -> None:
    d = keys_dir["ecdsa-p384"]
    path = _write(
        tmp_path / "key+cert.pem", (d / "private.pem").read_bytes() + (d / "cert.pem").read_bytes()
    )
    loaded = load_private_key(path)
    assert loaded.certificate is not None
    skid = loaded.certificate.x509.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert loaded.key_id == int.from_bytes(skid.value.digest[-4:], "big")


def test_key_file_with_foreign_cert_appended_ignores_it(
    keys_dir: dict[str, Path], tmp_path: Path
) -> None:
    key_pem = (keys_dir["rsa2048"] / "private.pem").read_bytes()
    other = _make_cert(_crypto_key(keys_dir, "ecdsa-p256"), CUSTOM_SKID)
    path = _write(tmp_path / "key+other.pem", key_pem + _pem(other))
    loaded = load_private_key(path)
    assert loaded.certificate is None
    assert loaded.key_id == key_id_from_public_key(loaded.public_key)


def test_key_file_with_cert_chain_picks_matching_cert(
    keys_dir: dict[str, Path], tmp_path: Path
) -> None:
    key = _crypto_key(keys_dir, "rsa2048")
    other = _make_cert(_crypto_key(keys_dir, "ecdsa-p256"), b"\x02" * 20)
    mine = _make_cert(key, CUSTOM_SKID)
    key_pem = (keys_dir["rsa2048"] / "private.pem").read_bytes()
    path = _write(tmp_path / "chain.pem", key_pem + _pem(other) + _pem(mine))
    loaded = load_private_key(path)
    assert loaded.key_id == CUSTOM_KEY_ID


# --- load_certificates ---------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("name", ["cert.pem", "cert.der"])
def test_load_certificates_pem_and_der(keys_dir: dict[str, Path], key_type: str, name: str) -> None:
    path = keys_dir[key_type] / name
    (cert,) = load_certificates(path)
    assert isinstance(cert, Certificate)
    assert cert.source == str(path)
    assert cert.der() == (keys_dir[key_type] / "cert.der").read_bytes()
    assert cert.pem() == (keys_dir[key_type] / "cert.pem").read_bytes()


def test_load_certificates_bundle(keys_dir: dict[str, Path], tmp_path: Path) -> None:
    order = ["ecdsa-p384", "rsa2048", "ecdsa-p256"]
    bundle = b"".join((keys_dir[t] / "cert.pem").read_bytes() for t in order)
    path = _write(tmp_path / "bundle.pem", bundle)
    loaded = load_certificates(path)
    assert [c.der() for c in loaded] == [(keys_dir[t] / "cert.der").read_bytes() for t in order]
    assert all(c.source == str(path) for c in loaded)


def test_load_certificates_from_bytes(keys_dir: dict[str, Path]) -> None:
    der = (keys_dir["rsa2048"] / "cert.der").read_bytes()
    (cert,) = load_certificates(der)
    assert cert.der() == der


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n",
        b"\x30\x82\x01\x00" + bytes(10),
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    ],
    ids=["empty", "text", "truncated-der", "bad-pem-body"],
)
def test_load_certificates_garbage(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path / "bad.crt", content)
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_certificates(path)
    assert str(path) in str(exc.value)


def test_load_certificates_private_key_only(keys_dir: dict[str, Path]) -> None:
    path = keys_dir["rsa2048"] / "private.pem"
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_certificates(path)
    assert str(path) in str(exc.value)


def test_load_certificates_missing(tmp_path: Path) -> None:
    path = tmp_path / "missing.der"
    with pytest.raises(imaguard.KeyLoadError) as exc:
        load_certificates(path)
    assert str(path) in str(exc.value)


def test_load_certificates_refuses_unsupported_keys(
    refused_keys: dict[str, tuple[object, str]], tmp_path: Path
) -> None:
    for key, problem in (refused_keys[k] for k in ("rsa1024", "ed25519", "p521", "p192")):
        path = _write(tmp_path / f"{problem}.pem", _pem(_make_cert(key, b"\x03" * 20)))  # type: ignore[arg-type]
        with pytest.raises(imaguard.KeyLoadError) as exc:
            load_certificates(path)
        assert str(path) in str(exc.value)
        assert problem in str(exc.value)


# --- key ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_key_ids_match_openssl(
    openssl: str, keys_dir: dict[str, Path], certs: dict[str, Certificate], key_type: str
) -> None:
    cert = certs[key_type]
    pem = keys_dir[key_type] / "cert.pem"
    skid = _openssl_skid(pem)
    assert len(skid) == 20
    expected_pub_id = _openssl_public_key_id(pem)
    assert cert.skid_key_id == int.from_bytes(skid[-4:], "big")
    assert cert.public_key_id == expected_pub_id
    # Generated certificates use RFC 5280 method 1, so the two ids agree.
    assert cert.skid_key_id == cert.public_key_id
    assert cert.key_id == expected_pub_id
    assert cert.key_ids == frozenset({expected_pub_id})


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_public_key_id_matches_pyca_spki(certs: dict[str, Certificate], key_type: str) -> None:
    cert = certs[key_type]
    spki = cert.x509.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = _spki_bit_string(spki)
    expected = int.from_bytes(hashlib.sha1(raw).digest()[16:20], "big")  # noqa: S324 - a key id
    assert cert.public_key_id == expected
    assert key_id_from_public_key(cert.x509.public_key()) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_private_key_id_without_certificate_is_public_key_id(
    signers: dict[str, PrivateKey], certs: dict[str, Certificate], key_type: str
) -> None:
    assert signers[key_type].certificate is None
    assert signers[key_type].key_id == certs[key_type].public_key_id


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p384"])
def test_custom_skid_certificate_has_two_ids(
    keys_dir: dict[str, Path], tmp_path: Path, key_type: str
) -> None:
    key = _crypto_key(keys_dir, key_type)
    path = _write(
        tmp_path / "custom.der",
        _make_cert(key, CUSTOM_SKID).public_bytes(serialization.Encoding.DER),
    )
    (cert,) = load_certificates(path)
    assert cert.skid_key_id == CUSTOM_KEY_ID
    assert cert.public_key_id == key_id_from_public_key(key.public_key())
    assert cert.skid_key_id != cert.public_key_id
    assert cert.key_ids == frozenset({CUSTOM_KEY_ID, cert.public_key_id})
    assert cert.key_id == CUSTOM_KEY_ID  # SKID first, as the kernel looks keys up


def test_skid_key_id_takes_the_last_four_bytes(keys_dir: dict[str, Path]) -> None:
    key = _crypto_key(keys_dir, "ecdsa-p256")
    cert = Certificate(_make_cert(key, bytes(range(1, 21))))
    assert cert.skid_key_id == 0x11121314


def test_certificate_without_skid(keys_dir: dict[str, Path]) -> None:
    key = _crypto_key(keys_dir, "ecdsa-p256")
    cert = Certificate(_make_cert(key, None))
    assert cert.skid_key_id is None
    assert cert.key_id == cert.public_key_id == key_id_from_public_key(key.public_key())
    assert cert.key_ids == frozenset({cert.public_key_id})


def test_certificate_with_short_skid(keys_dir: dict[str, Path]) -> None:
    key = _crypto_key(keys_dir, "ecdsa-p256")
    cert = Certificate(_make_cert(key, b"\x09\x09\x09"))
    assert cert.skid_key_id is None
    assert cert.key_id == cert.public_key_id


def test_certificate_description(certs: dict[str, Certificate]) -> None:
    assert certs["rsa3072"].description.startswith("RSA-3072 ")
    assert "CN=imaguard signing key" in certs["rsa3072"].description
    assert certs["ecdsa-p384"].description.startswith("ECDSA P-384 ")


# --- sign and verify -----------------------------------------------------------------------------


def _rsa_recover(cert: Certificate, signature: bytes) -> bytes:
    pub = cert.x509.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    numbers = pub.public_numbers()
    k = (pub.key_size + 7) // 8
    assert len(signature) == k
    return pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(k, "big")


@pytest.mark.parametrize("algo", SIGN_ALGOS)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_sign_and_verify_digest(
    signers: dict[str, PrivateKey],
    certs: dict[str, Certificate],
    key_type: str,
    algo: str,
) -> None:
    alg = by_name(algo)
    digest = hashlib.new(algo, f"{key_type}/{algo}".encode()).digest()
    key, cert = signers[key_type], certs[key_type]
    sig = key.sign_digest(alg, digest)

    assert cert.verifies(alg, digest, sig)
    cert.verify_digest(alg, digest, sig)  # returns None; raises if the signature is bad

    tampered = bytes([digest[0] ^ 0x01]) + digest[1:]
    assert not cert.verifies(alg, tampered, sig)
    with pytest.raises(imaguard.VerificationError):
        cert.verify_digest(alg, tampered, sig)

    bad_sig = sig[:-1] + bytes([sig[-1] ^ 0x80])
    assert not cert.verifies(alg, digest, bad_sig)

    if key_type.startswith("rsa"):
        # Independent check: EMSA-PKCS1-v1_5 with the DigestInfo for this algorithm.
        t = DIGEST_INFO[algo] + digest
        em = _rsa_recover(cert, sig)
        assert em == b"\x00\x01" + b"\xff" * (len(em) - len(t) - 3) + b"\x00" + t
        assert key.sign_digest(alg, digest) == sig  # deterministic
    else:
        assert sig[0] == 0x30  # DER Ecdsa-Sig-Value


@pytest.mark.parametrize("algo", ["sha256", "sha512"])
@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256", "ecdsa-p384"])
def test_signature_verifies_with_openssl(
    openssl: str,
    signers: dict[str, PrivateKey],
    keys_dir: dict[str, Path],
    tmp_path: Path,
    key_type: str,
    algo: str,
) -> None:
    digest = hashlib.new(algo, b"openssl oracle").digest()
    sig = signers[key_type].sign_digest(by_name(algo), digest)
    pub = _run_openssl("x509", "-in", str(keys_dir[key_type] / "cert.pem"), "-noout", "-pubkey")
    pub_path = _write(tmp_path / "pub.pem", pub)
    dgst = _write(tmp_path / "digest.bin", digest)
    sig_path = _write(tmp_path / "sig.bin", sig)

    def verify(data: Path) -> subprocess.CompletedProcess[bytes]:
        args = ["pkeyutl", "-verify", "-pubin", "-inkey", str(pub_path)]
        args += ["-pkeyopt", f"digest:{algo}", "-in", str(data), "-sigfile", str(sig_path)]
        return subprocess.run([openssl, *args], capture_output=True, check=False, timeout=30)

    ok = verify(dgst)
    assert ok.returncode == 0, ok.stderr
    bad = verify(_write(tmp_path / "other.bin", bytes(len(digest))))
    assert bad.returncode != 0


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
@pytest.mark.parametrize(
    ("algo", "length"), [("sha256", 20), ("sha256", 33), ("sha1", 32), ("sha512", 0)]
)
def test_sign_digest_wrong_length(
    signers: dict[str, PrivateKey], key_type: str, algo: str, length: int
) -> None:
    with pytest.raises(imaguard.FormatError, match=algo):
        signers[key_type].sign_digest(by_name(algo), bytes(length))


@pytest.mark.parametrize("algo", ["md4", "rmd128", "wp256", "streebog256"])
def test_sign_digest_unusable_algorithm(signers: dict[str, PrivateKey], algo: str) -> None:
    a = by_name(algo)
    with pytest.raises(imaguard.FormatError, match=algo):
        signers["rsa2048"].sign_digest(a, bytes(a.digest_size))


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
def test_verifies_false_for_wrong_length_digest(
    signers: dict[str, PrivateKey], certs: dict[str, Certificate], key_type: str
) -> None:
    sha256 = by_name("sha256")
    digest = hashlib.sha256(b"x").digest()
    sig = signers[key_type].sign_digest(sha256, digest)
    assert not certs[key_type].verifies(sha256, digest[:20], sig)
    assert not certs[key_type].verifies(sha256, digest + b"\0", sig)


def test_verifies_false_with_other_key_or_algorithm(
    signers: dict[str, PrivateKey], certs: dict[str, Certificate]
) -> None:
    sha256 = by_name("sha256")
    digest = hashlib.sha256(b"x").digest()
    rsa_sig = signers["rsa2048"].sign_digest(sha256, digest)
    ec_sig = signers["ecdsa-p256"].sign_digest(sha256, digest)
    assert not certs["rsa3072"].verifies(sha256, digest, rsa_sig)
    assert not certs["ecdsa-p384"].verifies(sha256, digest, ec_sig)
    assert not certs["ecdsa-p256"].verifies(sha256, digest, rsa_sig)
    assert not certs["rsa2048"].verifies(sha256, digest, ec_sig)
    assert not certs["rsa2048"].verifies(sha256, digest, b"")
    assert not certs["ecdsa-p256"].verifies(sha256, digest, b"\x30\x00")
    # An RSA signature binds the algorithm through the DigestInfo.
    sha3 = by_name("sha3-256")
    assert not certs["rsa2048"].verifies(sha3, digest, rsa_sig)
    with pytest.raises(imaguard.VerificationError, match="RSA-2048"):
        certs["rsa2048"].verify_digest(sha3, digest, rsa_sig)


# --- with_certificate / with_key_id --------------------------------------------------------------


def test_with_certificate_uses_its_skid(
    keys_dir: dict[str, Path], signers: dict[str, PrivateKey]
) -> None:
    key = signers["rsa2048"]
    cert = Certificate(_make_cert(_crypto_key(keys_dir, "rsa2048"), CUSTOM_SKID), "custom.der")
    bound = key.with_certificate(cert)
    assert bound.key_id == CUSTOM_KEY_ID
    assert bound.certificate is cert
    assert key.key_id != CUSTOM_KEY_ID  # the original is unchanged
    assert key.certificate is None


@pytest.mark.parametrize(
    ("key_type", "cert_type"),
    [
        ("rsa2048", "rsa3072"),
        ("rsa2048", "ecdsa-p256"),
        ("ecdsa-p256", "ecdsa-p384"),
        ("ecdsa-p256", "rsa2048"),
        ("rsa3072", "rsa2048"),
    ],
)
def test_with_certificate_refuses_mismatch(
    signers: dict[str, PrivateKey], certs: dict[str, Certificate], key_type: str, cert_type: str
) -> None:
    with pytest.raises(imaguard.KeyLoadError, match="does not match"):
        signers[key_type].with_certificate(certs[cert_type])


def test_with_certificate_of_another_ec_key_on_the_same_curve(
    signers: dict[str, PrivateKey],
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(imaguard.KeyLoadError, match="does not match"):
        signers["ecdsa-p256"].with_certificate(Certificate(_make_cert(other, CUSTOM_SKID)))


def test_with_key_id(signers: dict[str, PrivateKey]) -> None:
    key = signers["ecdsa-p256"].with_key_id(0xCAFEBABE)
    assert key.key_id == 0xCAFEBABE
    assert signers["ecdsa-p256"].key_id != 0xCAFEBABE
    for bad in (-1, 0x1_0000_0000):
        with pytest.raises(imaguard.KeyLoadError, match="4 bytes"):
            signers["ecdsa-p256"].with_key_id(bad)


# --- keygen --------------------------------------------------------------------------------------


EXPECTED_KEY = {
    "rsa2048": (rsa.RSAPublicKey, 2048, hashes.SHA256),
    "rsa3072": (rsa.RSAPublicKey, 3072, hashes.SHA256),
    "rsa4096": (rsa.RSAPublicKey, 4096, hashes.SHA256),
    "ecdsa-p256": (ec.EllipticCurvePublicKey, 256, hashes.SHA256),
    "ecdsa-p384": (ec.EllipticCurvePublicKey, 384, hashes.SHA384),
}


def test_key_types_list() -> None:
    assert KEY_TYPES == ("rsa2048", "rsa3072", "rsa4096", "ecdsa-p256", "ecdsa-p384")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_generated_certificate(keys_dir: dict[str, Path], key_type: str) -> None:
    """keys_dir holds what generate_key(key_type).write() produced (tests/conftest.py)."""
    d = keys_dir[key_type]
    cert = x509.load_der_x509_certificate((d / "cert.der").read_bytes())
    assert cert == x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
    key = _crypto_key(keys_dir, key_type)
    pub_cls, size, sig_hash = EXPECTED_KEY[key_type]
    pub = cert.public_key()
    assert isinstance(pub, pub_cls)
    assert isinstance(pub, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    assert pub.key_size == size
    assert key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert isinstance(cert.signature_hash_algorithm, sig_hash)
    cert.verify_directly_issued_by(cert)  # self-signed, signature valid
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "imaguard signing key"
    )

    exts = cert.extensions
    skid = exts.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert skid.value == x509.SubjectKeyIdentifier.from_public_key(pub)
    assert len(skid.value.digest) == 20
    akid = exts.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert akid.value.key_identifier == skid.value.digest
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca is False
    assert bc.critical
    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.value.digital_signature is True
    assert ku.value.key_cert_sign is False
    assert ku.critical
    eku = exts.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CODE_SIGNING]

    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def test_generate_key_returns_matching_pair(generated_rsa: imaguard.GeneratedKey) -> None:
    g = generated_rsa
    assert isinstance(g.private_key, PrivateKey)
    assert isinstance(g.certificate, Certificate)
    assert g.private_key.certificate is g.certificate
    assert g.private_key.key_id == g.certificate.key_id == g.certificate.public_key_id
    sha256 = by_name("sha256")
    digest = hashlib.sha256(b"generated").digest()
    assert g.certificate.verifies(sha256, digest, g.private_key.sign_digest(sha256, digest))


def test_generate_key_parameters() -> None:
    now = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    g = imaguard.generate_key("ecdsa-p256", common_name="build signer", days=30, now=now)
    cert = g.certificate.x509
    assert cert.not_valid_before_utc == now - datetime.timedelta(minutes=5)
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=30)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "build signer"
    other = imaguard.generate_key("ecdsa-p256")
    assert other.certificate.x509.serial_number != cert.serial_number
    assert other.certificate.key_id != g.certificate.key_id


@pytest.mark.parametrize(
    "key_type", ["rsa1024", "rsa", "rsa2049", "ed25519", "ecdsa-p521", "", "RSA2048", "rsa2048 "]
)
def test_generate_key_unknown_type(key_type: str) -> None:
    with pytest.raises(imaguard.UsageError) as exc:
        imaguard.generate_key(key_type)
    assert repr(key_type) in str(exc.value)
    assert "rsa2048" in str(exc.value)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _snapshot(d: Path) -> dict[str, tuple[bytes, int, int]]:
    out = {}
    for p in sorted(d.iterdir()):
        st = p.stat()
        out[p.name] = (p.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


@pytest.fixture(scope="module")
def ec_generated() -> Callable[[], imaguard.GeneratedKey]:
    return lambda: imaguard.generate_key("ecdsa-p256")


def test_write_creates_three_files(
    tmp_path: Path, generated_rsa: imaguard.GeneratedKey, umask_zero: None
) -> None:
    out = tmp_path / "a" / "b"
    written = generated_rsa.write(out)
    assert written == [out / "private.pem", out / "cert.pem", out / "cert.der"]
    assert sorted(p.name for p in out.iterdir()) == ["cert.der", "cert.pem", "private.pem"]
    assert stat.S_IMODE((out / "private.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "cert.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "cert.der").stat().st_mode) == 0o644
    pem = (out / "private.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    loaded = load_private_key(out / "private.pem")
    assert loaded.key.private_numbers() == generated_rsa.private_key.key.private_numbers()
    assert (out / "cert.der").read_bytes() == generated_rsa.certificate.der()
    assert (out / "cert.pem").read_bytes() == generated_rsa.certificate.pem()


def test_write_refuses_to_overwrite(
    tmp_path: Path,
    generated_rsa: imaguard.GeneratedKey,
    ec_generated: Callable[[], imaguard.GeneratedKey],
) -> None:
    generated_rsa.write(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(imaguard.UsageError, match="refusing to overwrite") as exc:
        ec_generated().write(tmp_path)
    assert str(tmp_path / "private.pem") in str(exc.value)
    assert _snapshot(tmp_path) == before  # unchanged, and no temporary files left behind


@pytest.mark.parametrize("existing", ["private.pem", "cert.pem", "cert.der"])
def test_write_refuses_if_any_file_exists(
    tmp_path: Path, ec_generated: Callable[[], imaguard.GeneratedKey], existing: str
) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(imaguard.UsageError) as exc:
        ec_generated().write(tmp_path)
    assert existing in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_bytes() == b"precious"


def test_write_overwrite_true_replaces(
    tmp_path: Path,
    generated_rsa: imaguard.GeneratedKey,
    ec_generated: Callable[[], imaguard.GeneratedKey],
    umask_zero: None,
) -> None:
    generated_rsa.write(tmp_path)
    (tmp_path / "private.pem").chmod(0o644)
    new = ec_generated()
    new.write(tmp_path, overwrite=True)
    assert (tmp_path / "cert.der").read_bytes() == new.certificate.der()
    assert (tmp_path / "cert.pem").read_bytes() == new.certificate.pem()
    assert load_private_key(tmp_path / "private.pem").key_id == new.private_key.key_id
    assert stat.S_IMODE((tmp_path / "private.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.der", "cert.pem", "private.pem"]
