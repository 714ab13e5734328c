"""Generate a signing key and a self-signed certificate the kernel's IMA and evmctl accept.

The certificate carries a Subject Key Identifier made by RFC 5280 method 1 (SHA-1 of
the public key), so the kernel's key id (from the SKID) and evmctl's (from the public
key) are the same value.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imaguard.crypto._keys import Certificate, PrivateKey
from imaguard.errors import UsageError

__all__ = ["KEY_TYPES", "GeneratedKey", "generate_key"]

from imaguard.crypto._keytypes import KEY_TYPES


@dataclass(frozen=True)
class GeneratedKey:
    """A new private key with its self-signed certificate."""

    private_key: PrivateKey
    certificate: Certificate

    def write(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> list[Path]:
        """Write ``private.pem`` (PKCS#8, mode 0600), ``cert.pem`` and ``cert.der``.

        Refuses to replace existing files unless ``overwrite``: losing a signing key is
        not recoverable.
        """
        out = Path(directory)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{out}: cannot create the key directory: {e.strerror or e}") from e
        files = {
            out / "private.pem": self.private_key.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            out / "cert.pem": self.certificate.pem(),
            out / "cert.der": self.certificate.der(),
        }
        if not overwrite:
            existing = [str(p) for p in files if p.exists()]
            if existing:
                raise UsageError(f"refusing to overwrite {', '.join(existing)}")
        for path, data in files.items():
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            mode = 0o600 if path.name == "private.pem" else 0o644
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            except OSError as e:
                raise UsageError(f"{path}: cannot write: {e.strerror or e}") from e
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return list(files)


def generate_key(
    key_type: str = "rsa2048",
    common_name: str = "imaguard signing key",
    days: int = 3650,
    now: datetime.datetime | None = None,
) -> GeneratedKey:
    """Generate a key of ``key_type`` (see KEY_TYPES) and a self-signed X.509 certificate."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type.startswith("rsa") and key_type[3:] in {"2048", "3072", "4096"}:
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
        sig_hash: hashes.SHA256 | hashes.SHA384 = hashes.SHA256()
    elif key_type == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
        sig_hash = hashes.SHA256()
    elif key_type == "ecdsa-p384":
        key = ec.generate_private_key(ec.SECP384R1())
        sig_hash = hashes.SHA384()
    else:
        raise UsageError(f"unknown key type {key_type!r} (choose from {', '.join(KEY_TYPES)})")
    start = now or datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imaguard"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, sig_hash)
    )
    certificate = Certificate(cert, "<generated>")
    return GeneratedKey(PrivateKey(key, certificate, "<generated>"), certificate)
