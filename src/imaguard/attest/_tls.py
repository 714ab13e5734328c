"""The agent's TLS identity and its server context (mTLS, as Keylime's agents use it).

The agent presents its own certificate, which it registers with the registrar
(``mtls_cert``); the verifier and the tenant trust exactly that certificate for this agent
(``keylime/web_util.py`` ``generate_agent_tls_context``) and do not check host names. The
agent asks for a client certificate and accepts those issued by ``tls.ca``: the CA of
Keylime's verifier and tenant client certificates (``cacert.crt`` of ``keylime_ca``).

When ``tls.key`` / ``tls.cert`` are missing, an RSA 2048 key and a self-signed
certificate (CN = the agent's uuid, valid ten years) are made, as the Rust agent does.
The RSA key is also the agent's payload key (Keylime's "NK"): its public half is the
``pubkey`` of quotes and is bound to them through PCR 16.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from imaguard._fsutil import atomic_write
from imaguard.errors import UsageError

__all__ = ["TlsIdentity", "ensure_identity", "server_context"]

_log = logging.getLogger(__name__)


class TlsIdentity:
    """The agent's key and certificate, loaded."""

    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def pubkey_pem(self) -> str:
        """The public key as Keylime's ``pubkey`` (PEM, SubjectPublicKeyInfo)."""
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )


def _make(uuid: str, host: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uuid)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def ensure_identity(cert_path: Path, key_path: Path, uuid: str, host: str) -> TlsIdentity:
    """Load the agent's key and certificate, making both when neither exists."""
    have_key, have_cert = key_path.exists(), cert_path.exists()
    if have_key != have_cert:
        missing = cert_path if have_key else key_path
        raise UsageError(
            f"{missing}: missing while {key_path if have_key else cert_path} exists; "
            "give both or neither (then both are made)"
        )
    if not have_key:
        key, cert = _make(uuid, host)
        try:
            key_path.parent.mkdir(parents=True, exist_ok=True)
            cert_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                mode=0o600,
            )
            atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        except OSError as e:
            raise UsageError(f"cannot write the agent's TLS files: {e}") from e
        _log.info("made a TLS key %s and a self-signed certificate %s", key_path, cert_path)
        return TlsIdentity(key, cert)
    try:
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"{key_path}: not a PEM private key without a password ({e})") from e
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise UsageError(f"{key_path}: must be an RSA key (it is also Keylime's payload key)")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as e:
        raise UsageError(f"{cert_path}: not a PEM certificate ({e})") from e
    if cert.public_key() != loaded.public_key():
        raise UsageError(f"{cert_path}: its public key is not the key in {key_path}")
    return TlsIdentity(loaded, cert)


def server_context(cert_path: Path, key_path: Path, ca_path: Path) -> ssl.SSLContext:
    """A TLS server context that requires a client certificate issued by ``ca_path``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"{cert_path}, {key_path}: cannot be used for TLS ({e})") from e
    try:
        ctx.load_verify_locations(cafile=os.fspath(ca_path))
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"{ca_path}: not a PEM CA certificate file ({e})") from e
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
