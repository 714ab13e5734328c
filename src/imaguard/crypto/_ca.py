"""A local certificate authority for IMA signing keys, and requests for an outside one.

What the kernel checks (mainline, 6.x):

* a certificate enters the ``.ima`` keyring only through ``restrict_link_by_digsig``
  (``crypto/asymmetric_keys/restrict.c``, chosen in ``security/integrity/digsig.c``):
  its key usage must include ``digitalSignature``, and it must be neither a CA
  (``basicConstraints CA:TRUE``) nor carry ``keyCertSign``; then a key in
  ``.builtin_trusted_keys`` (or also ``.secondary_trusted_keys`` with
  ``CONFIG_IMA_KEYRINGS_PERMIT_SIGNED_BY_BUILTIN_OR_SECONDARY``) must have signed it;
* that signer is found by the certificate's **Authority Key Identifier**
  (``x509_akid_note_kid()`` in ``crypto/asymmetric_keys/x509_cert_parser.c`` fills
  ``auth_ids[1]``, which ``restrict_link_by_signature`` looks up), so an issued
  certificate carries the CA's key identifier;
* a CA for the machine keyring must have ``CA:TRUE`` and ``keyCertSign``, and with
  ``CONFIG_INTEGRITY_CA_MACHINE_KEYRING_MAX`` no ``digitalSignature`` (``restrict_link_by_ca``).

So a CA made here has ``CA:TRUE`` (path length 0), ``keyCertSign`` and ``cRLSign`` only, and
a Subject Key Identifier; an issued certificate has ``CA:FALSE``, ``digitalSignature`` only,
the code-signing EKU (1.3.6.1.5.5.7.3.3), an SKI made by RFC 5280 method 1 (so the kernel's
and evmctl's key ids agree, see ``_keys.py``) and the CA's key id as its AKI.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imaguard._fsutil import atomic_write
from imaguard.crypto._keygen import generate_key
from imaguard.crypto._keys import Certificate, PrivateKey, PublicKey
from imaguard.errors import KeyLoadError, UsageError

__all__ = [
    "CertificateAuthority",
    "create_ca",
    "create_csr",
    "issue_certificate",
    "self_signed_certificate",
    "write_certificate",
]

CODE_SIGNING_EKU = ExtendedKeyUsageOID.CODE_SIGNING
"""1.3.6.1.5.5.7.3.3, the extended key usage an IMA signing certificate carries."""


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imaguard"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest a certificate is signed with: SHA-384 for a P-384 key, else SHA-256."""
    public = key.public_key
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    try:
        return builder.sign(key.key, _hash_for(key))
    except (ValueError, TypeError) as e:
        raise KeyLoadError(
            f"cannot sign a certificate with {key.source or key.description}: {e}"
        ) from e


def _validity(
    builder: x509.CertificateBuilder,
    days: int,
    now: datetime.datetime | None,
    not_after: datetime.datetime | None = None,
) -> x509.CertificateBuilder:
    if days < 1:
        raise UsageError(f"a certificate must be valid for at least one day, not {days}")
    start = now or datetime.datetime.now(datetime.UTC)
    end = start + datetime.timedelta(days=days)
    if not_after is not None and end > not_after:
        end = not_after  # never outlive the CA: a chain is only as valid as its issuer
    return builder.not_valid_before(start - datetime.timedelta(minutes=5)).not_valid_after(end)


def _public_of(subject: PrivateKey | PublicKey) -> PublicKey:
    return subject.public_key if isinstance(subject, PrivateKey) else subject


def _leaf_extensions(
    builder: x509.CertificateBuilder, public: PublicKey
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([CODE_SIGNING_EKU]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A local CA: its key (a file key, or a key on a token) and its certificate."""

    private_key: PrivateKey
    certificate: Certificate

    def write(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> list[Path]:
        """Write ``ca.pem`` and ``ca.der``, and ``ca-key.pem`` (PKCS#8, mode 0600) unless
        the key lives on a token. Refuses to replace files unless ``overwrite``."""
        out = Path(directory)
        files: dict[Path, tuple[bytes, int]] = {}
        try:
            key_pem = self.private_key.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        except KeyLoadError:
            key_pem = None  # on a token: nothing to write
        if key_pem is not None:
            files[out / "ca-key.pem"] = (key_pem, 0o600)
        files[out / "ca.pem"] = (self.certificate.pem(), 0o644)
        files[out / "ca.der"] = (self.certificate.der(), 0o644)
        return _write_files(out, files, overwrite)


def _write_files(out: Path, files: dict[Path, tuple[bytes, int]], overwrite: bool) -> list[Path]:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{out}: cannot create the directory: {e.strerror or e}") from e
    if not overwrite:
        existing = [str(p) for p in files if p.exists()]
        if existing:
            raise UsageError(f"refusing to overwrite {', '.join(existing)}")
    for path, (data, mode) in files.items():
        try:
            atomic_write(path, data, mode=mode)
        except OSError as e:
            raise UsageError(f"{path}: cannot write: {e.strerror or e}") from e
    return list(files)


def write_certificate(
    certificate: Certificate, directory: str | os.PathLike[str], *, overwrite: bool = False
) -> list[Path]:
    """Write ``cert.pem`` and ``cert.der`` (evmctl and the kernel read DER) into a directory."""
    out = Path(directory)
    files = {
        out / "cert.pem": (certificate.pem(), 0o644),
        out / "cert.der": (certificate.der(), 0o644),
    }
    return _write_files(out, files, overwrite)


def create_ca(
    key: PrivateKey | str = "rsa2048",
    common_name: str = "imaguard local CA",
    days: int = 3650,
    now: datetime.datetime | None = None,
) -> CertificateAuthority:
    """A self-signed CA certificate for ``key`` (a PrivateKey, or a key type to generate).

    Extensions: basicConstraints ``CA:TRUE, pathlen:0`` (critical), keyUsage
    ``keyCertSign, cRLSign`` (critical, no digitalSignature), a Subject Key Identifier
    and the matching Authority Key Identifier.
    """
    private = key if isinstance(key, PrivateKey) else generate_key(key).private_key
    public = private.public_key
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    cert = Certificate(_sign(_validity(builder, days, now), private), private.source or "<ca>")
    return CertificateAuthority(private.with_certificate(cert), cert)


def _check_ca(ca_key: PrivateKey, ca_certificate: Certificate) -> None:
    where = ca_certificate.source or "CA certificate"
    try:
        basic = ca_certificate.x509.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise KeyLoadError(f"{where}: not a CA certificate (no basicConstraints)") from None
    if not basic.value.ca:
        raise KeyLoadError(f"{where}: not a CA certificate (basicConstraints CA:FALSE)")
    try:
        usage = ca_certificate.x509.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise KeyLoadError(f"{where}: its key usage does not allow keyCertSign")
    if ca_certificate.public_key.public_numbers() != ca_key.public_key.public_numbers():
        raise KeyLoadError(
            f"{where}: its public key does not match the CA key {ca_key.source}".rstrip()
        )


def issue_certificate(
    subject: PrivateKey | PublicKey,
    ca_key: PrivateKey,
    ca_certificate: Certificate,
    common_name: str = "imaguard signing key",
    days: int = 3650,
    now: datetime.datetime | None = None,
) -> Certificate:
    """A code-signing certificate for ``subject``'s public key, issued by the CA.

    Extensions: basicConstraints ``CA:FALSE`` (critical), keyUsage ``digitalSignature``
    (critical), extendedKeyUsage codeSigning, a Subject Key Identifier (SHA-1 of the key)
    and an Authority Key Identifier holding the CA's key id (its SKI, or SHA-1 of its key
    when the CA certificate has none). It never outlives the CA certificate.
    """
    _check_ca(ca_key, ca_certificate)
    public = _public_of(subject)
    ca_x509 = ca_certificate.x509
    try:
        ca_ski = ca_x509.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_certificate.public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_x509.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
    )
    builder = _leaf_extensions(builder, public).add_extension(aki, critical=False)
    builder = _validity(builder, days, now, ca_x509.not_valid_after_utc)
    return Certificate(_sign(builder, ca_key), "<issued>")


def self_signed_certificate(
    key: PrivateKey,
    common_name: str = "imaguard signing key",
    days: int = 3650,
    now: datetime.datetime | None = None,
) -> Certificate:
    """A self-signed code-signing certificate for an existing key (a file or token key),
    with the same extensions :func:`imaguard.generate_key` writes."""
    public = key.public_key
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
    )
    builder = _leaf_extensions(builder, public).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    )
    return Certificate(_sign(_validity(builder, days, now), key), key.source or "<self-signed>")


def create_csr(key: PrivateKey, common_name: str = "imaguard signing key") -> bytes:
    """A PEM certificate signing request for ``key``, signed by it, requesting the
    extensions an IMA signing certificate needs: basicConstraints ``CA:FALSE``, keyUsage
    ``digitalSignature``, extendedKeyUsage codeSigning and a Subject Key Identifier."""
    public = key.public_key
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(common_name))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([CODE_SIGNING_EKU]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    try:
        csr = builder.sign(key.key, _hash_for(key))
    except (ValueError, TypeError) as e:
        raise KeyLoadError(
            f"cannot sign a request with {key.source or key.description}: {e}"
        ) from e
    return csr.public_bytes(serialization.Encoding.PEM)
