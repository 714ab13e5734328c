"""A local CA, the code-signing certificates it issues, and requests for an outside CA.

Each extension the kernel's keyrings check is asserted exactly (crypto/_ca.py says why each
is there); tests/interop/test_keys_ca.py has openssl judge the same files.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

import imaguard
from imaguard.crypto import (
    Certificate,
    CertificateAuthority,
    create_ca,
    create_csr,
    issue_certificate,
    self_signed_certificate,
    write_certificate,
)

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _usage(**set_: bool) -> x509.KeyUsage:
    fields = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    fields.update(set_)
    return x509.KeyUsage(**fields)


def _ext(
    cert: x509.Certificate | x509.CertificateSigningRequest, oid: x509.ObjectIdentifier
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_oid(oid)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca("ecdsa-p256", common_name="Test IMA CA", now=NOW)


def assert_code_signing_leaf(cert: x509.Certificate, public: object) -> None:
    """CA:FALSE, digitalSignature only, codeSigning, SKI = SHA-1 of the key."""
    oids = {e.oid for e in cert.extensions}
    assert ExtensionOID.BASIC_CONSTRAINTS in oids
    basic = _ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    assert (basic.critical, basic.value) == (
        True,
        x509.BasicConstraints(ca=False, path_length=None),
    )
    usage = _ext(cert, ExtensionOID.KEY_USAGE)
    assert (usage.critical, usage.value) == (True, _usage(digital_signature=True))
    eku = _ext(cert, ExtensionOID.EXTENDED_KEY_USAGE)
    assert eku.value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
    assert eku.oid.dotted_string == "2.5.29.37"
    assert isinstance(eku.value, x509.ExtendedKeyUsage)
    assert list(eku.value) == [x509.ObjectIdentifier("1.3.6.1.5.5.7.3.3")]
    ski = _ext(cert, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(public)  # type: ignore[arg-type]


def test_ca_certificate_extensions(ca: CertificateAuthority) -> None:
    cert = ca.certificate.x509
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test IMA CA"
    basic = _ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    assert (basic.critical, basic.value) == (True, x509.BasicConstraints(ca=True, path_length=0))
    usage = _ext(cert, ExtensionOID.KEY_USAGE)
    assert (usage.critical, usage.value) == (True, _usage(key_cert_sign=True, crl_sign=True))
    ski = _ext(cert, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.private_key.public_key)
    aki = _ext(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.digest
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=3650)
    cert.verify_directly_issued_by(cert)  # self-signed
    assert ca.private_key.certificate is ca.certificate


def test_issued_certificate(ca: CertificateAuthority, rsa_key: imaguard.PrivateKey) -> None:
    cert = issue_certificate(rsa_key, ca.private_key, ca.certificate, common_name="pkg", now=NOW)
    x = cert.x509
    assert x.issuer == ca.certificate.x509.subject
    assert x.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pkg"
    x.verify_directly_issued_by(ca.certificate.x509)
    assert_code_signing_leaf(x, rsa_key.public_key)
    aki = _ext(x, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    ca_ski = _ext(ca.certificate.x509, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.digest
    assert (aki.authority_cert_issuer, aki.authority_cert_serial_number) == (None, None)
    assert isinstance(x.signature_hash_algorithm, hashes.SHA256)  # the P-256 CA signs with it
    # the kernel's key id (SKID) and evmctl's (public key) agree
    assert cert.skid_key_id == cert.public_key_id == rsa_key.key_id
    assert {e.oid for e in x.extensions} == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }


def test_issued_certificate_never_outlives_the_ca(
    ca: CertificateAuthority, ec_key: imaguard.PrivateKey
) -> None:
    cert = issue_certificate(ec_key, ca.private_key, ca.certificate, days=20000, now=NOW)
    assert cert.x509.not_valid_after_utc == ca.certificate.x509.not_valid_after_utc
    short = issue_certificate(ec_key.public_key, ca.private_key, ca.certificate, days=1, now=NOW)
    assert short.x509.not_valid_after_utc == NOW + datetime.timedelta(days=1)
    assert short.x509.not_valid_before_utc == NOW - datetime.timedelta(minutes=5)


def test_a_p384_ca_signs_with_sha384(ec_key: imaguard.PrivateKey) -> None:
    big = create_ca("ecdsa-p384", now=NOW)
    assert isinstance(big.certificate.x509.signature_hash_algorithm, hashes.SHA384)
    cert = issue_certificate(ec_key, big.private_key, big.certificate, now=NOW)
    assert isinstance(cert.x509.signature_hash_algorithm, hashes.SHA384)


def test_a_ca_without_ski_is_named_by_its_public_key(ec_key: imaguard.PrivateKey) -> None:
    made = create_ca("rsa2048", now=NOW)
    key = made.private_key.key
    name = made.certificate.x509.subject
    bare = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    ca_cert = Certificate(bare, "bare-ca")
    cert = issue_certificate(ec_key, made.private_key, ca_cert, now=NOW)
    aki = _ext(cert.x509, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    assert aki == x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key)


def test_issuing_refuses_what_is_not_a_ca(
    ca: CertificateAuthority, rsa_key: imaguard.PrivateKey, ec_key: imaguard.PrivateKey
) -> None:
    leaf = imaguard.generate_key("ecdsa-p256")
    with pytest.raises(
        imaguard.KeyLoadError, match=r"not a CA certificate \(basicConstraints CA:FALSE\)"
    ):
        issue_certificate(rsa_key, leaf.private_key, leaf.certificate)
    with pytest.raises(imaguard.KeyLoadError, match="does not match the CA key"):
        issue_certificate(rsa_key, ec_key, ca.certificate)
    key = leaf.private_key.key
    name = leaf.certificate.x509.subject
    no_sign = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(8)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(imaguard.KeyLoadError, match="does not allow keyCertSign"):
        issue_certificate(rsa_key, leaf.private_key, Certificate(no_sign))
    no_basic = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(9)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=10))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(imaguard.KeyLoadError, match=r"no basicConstraints"):
        issue_certificate(rsa_key, leaf.private_key, Certificate(no_basic))


def test_self_signed_certificate_for_an_existing_key(ec_key: imaguard.PrivateKey) -> None:
    cert = self_signed_certificate(ec_key, common_name="mine", days=30, now=NOW)
    x = cert.x509
    assert x.subject == x.issuer
    x.verify_directly_issued_by(x)
    assert_code_signing_leaf(x, ec_key.public_key)
    assert x.not_valid_after_utc == NOW + datetime.timedelta(days=30)
    with pytest.raises(imaguard.UsageError, match="at least one day"):
        self_signed_certificate(ec_key, days=0)


def test_csr_requests_the_extensions(ec_key: imaguard.PrivateKey) -> None:
    csr = x509.load_pem_x509_csr(create_csr(ec_key, common_name="outside"))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "outside"
    assert csr.public_key().public_numbers() == ec_key.public_key.public_numbers()  # type: ignore[union-attr]
    basic = _ext(csr, ExtensionOID.BASIC_CONSTRAINTS)
    assert (basic.critical, basic.value) == (
        True,
        x509.BasicConstraints(ca=False, path_length=None),
    )
    usage = _ext(csr, ExtensionOID.KEY_USAGE)
    assert (usage.critical, usage.value) == (True, _usage(digital_signature=True))
    assert _ext(csr, ExtensionOID.EXTENDED_KEY_USAGE).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CODE_SIGNING]
    )
    assert _ext(csr, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value == (
        x509.SubjectKeyIdentifier.from_public_key(ec_key.public_key)
    )


def test_ca_write_and_certificate_write(
    tmp_path: Path, ca: CertificateAuthority, ec_key: imaguard.PrivateKey
) -> None:
    written = ca.write(tmp_path / "ca")
    assert [p.name for p in written] == ["ca-key.pem", "ca.pem", "ca.der"]
    assert (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert imaguard.load_certificates(tmp_path / "ca" / "ca.der")[0].der() == ca.certificate.der()
    reloaded = imaguard.load_private_key(tmp_path / "ca" / "ca-key.pem")
    assert reloaded.public_key.public_numbers() == ca.private_key.public_key.public_numbers()
    with pytest.raises(imaguard.UsageError, match="refusing to overwrite"):
        ca.write(tmp_path / "ca")
    assert len(ca.write(tmp_path / "ca", overwrite=True)) == 3

    cert = issue_certificate(ec_key, ca.private_key, ca.certificate)
    assert [p.name for p in write_certificate(cert, tmp_path / "leaf")] == ["cert.pem", "cert.der"]
    assert (tmp_path / "leaf" / "cert.der").read_bytes() == cert.der()
    assert (tmp_path / "leaf" / "cert.pem").read_bytes() == cert.pem()
    with pytest.raises(imaguard.UsageError, match="refusing to overwrite"):
        write_certificate(cert, tmp_path / "leaf")


class _RefusingKey(rsa.RSAPrivateKey):
    """An RSA key whose signer refuses (as a token can): the error is a KeyLoadError."""

    def __init__(self, real: rsa.RSAPrivateKey) -> None:
        self._real = real

    @property
    def key_size(self) -> int:
        return self._real.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._real.public_key()

    def sign(self, data: object, padding: object, algorithm: object) -> bytes:
        raise ValueError("refused by the signer")

    def decrypt(self, ciphertext: bytes, padding: object) -> bytes:
        raise NotImplementedError

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise NotImplementedError

    def private_bytes(self, *args: object) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> _RefusingKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _RefusingKey:
        return self


def test_a_signer_that_refuses_is_a_key_load_error(rsa_key: imaguard.PrivateKey) -> None:
    assert isinstance(rsa_key.key, rsa.RSAPrivateKey)
    refusing = imaguard.PrivateKey(_RefusingKey(rsa_key.key), None, "refusing-key")
    with pytest.raises(imaguard.KeyLoadError, match="cannot sign a certificate with refusing-key"):
        self_signed_certificate(refusing)
    with pytest.raises(imaguard.KeyLoadError, match="cannot sign a request with refusing-key"):
        create_csr(refusing)


def test_write_errors_name_the_path(tmp_path: Path, ca: CertificateAuthority) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_bytes(b"x")
    with pytest.raises(imaguard.UsageError, match="cannot create the directory"):
        ca.write(blocker / "ca")
    out = tmp_path / "ca"
    (out / "ca.pem").mkdir(parents=True)  # a directory where the file goes
    with pytest.raises(imaguard.UsageError, match=f"{out / 'ca.pem'}: cannot write"):
        ca.write(out, overwrite=True)
