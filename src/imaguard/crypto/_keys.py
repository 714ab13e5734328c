"""Private keys, certificates and key ids.

Key ids, two ways (the kernel's security/integrity/digsig_asymmetric.c; ima-evm-utils'
``calc_keyid_v2()`` in src/libimaevm.c):

* **kernel**: the kernel finds a signing key by the 4-byte id in the signature header,
  matched against the *trailing* bytes of the certificate's Subject Key Identifier.
* **evmctl**: evmctl computes the id as the last 4 bytes of SHA-1 over the
  subjectPublicKey BIT STRING contents (RSA: DER RSAPublicKey; EC: the uncompressed
  point) and never reads the SKID when it verifies.

The two agree whenever the SKID was made by RFC 5280 method 1 (SHA-1 of the public
key), which is what OpenSSL's ``subjectKeyIdentifier=hash`` and ``imaguard keys
generate`` produce. They differ for certificates with another SKID. imaguard **signs**
with the SKID-derived id when a certificate is at hand (what the kernel looks up), and
the public-key id otherwise; its keyrings **look up** both ids, so it verifies what
either tool made.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from imaguard.errors import (
    FormatError,
    KeyLoadError,
    UnsupportedAlgorithmError,
    VerificationError,
)
from imaguard.formats.hashalgo import HashAlgo

__all__ = [
    "Certificate",
    "PrehashedSigner",
    "PrivateKey",
    "PublicKey",
    "digest_verifier",
    "key_id_from_public_key",
    "load_certificates",
    "load_private_key",
    "load_public_key",
    "verify_prehashed",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_PrivateKeyTypes = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

RSA_SIZES = (2048, 3072, 4096)
"""RSA modulus sizes imaguard accepts for signing (2048-4096 bits)."""
EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}

_CRYPTO_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sm3": hashes.SM3,
    "sha3-256": hashes.SHA3_256,
    "sha3-384": hashes.SHA3_384,
    "sha3-512": hashes.SHA3_512,
}

PASSWORD_ENV = "IMAGUARD_KEY_PASSWORD"  # noqa: S105 - the variable's name


def _crypto_hash(algorithm: HashAlgo) -> hashes.HashAlgorithm:
    cls = _CRYPTO_HASHES.get(algorithm.name)
    if cls is None:
        raise FormatError(f"hash algorithm {algorithm.name} cannot be used for signatures here")
    return cls()


def key_id_from_public_key(public_key: PublicKey) -> int:
    """evmctl's key id: last 4 bytes of SHA-1 over the subjectPublicKey contents."""
    if isinstance(public_key, rsa.RSAPublicKey):
        raw = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        raw = public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return int.from_bytes(hashlib.sha1(raw).digest()[-4:], "big")  # noqa: S324 - an id, not a MAC


def _describe(public_key: PublicKey) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    return f"ECDSA {EC_CURVES.get(public_key.curve.name, public_key.curve.name)}"


def _check_supported(public_key: object, where: str) -> PublicKey:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size not in RSA_SIZES:
            raise KeyLoadError(
                f"{where}: RSA key of {public_key.key_size} bits; imaguard accepts 2048, 3072, 4096"
            )
        return public_key
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in EC_CURVES:
            raise KeyLoadError(
                f"{where}: EC key on curve {public_key.curve.name}; imaguard accepts P-256, P-384"
            )
        return public_key
    raise KeyLoadError(
        f"{where}: {type(public_key).__name__} keys are not supported (RSA or ECDSA)"
    )


def load_public_key(der_or_pem: bytes) -> PublicKey:
    """A bare RSA/EC public key (DER SubjectPublicKeyInfo or PEM); KeyLoadError otherwise."""
    try:
        if b"-----BEGIN" in der_or_pem:
            key = serialization.load_pem_public_key(der_or_pem)
        else:
            key = serialization.load_der_public_key(der_or_pem)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyLoadError(f"not a public key ({e})") from e
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise KeyLoadError(f"{type(key).__name__} keys are not supported (RSA or ECDSA)")
    return key


def verify_prehashed(
    public_key: PublicKey, algorithm: HashAlgo, digest: bytes, signature: bytes
) -> bool:
    """True when ``signature`` by ``public_key`` verifies over the prehashed ``digest``.

    Raises :class:`~imaguard.UnsupportedAlgorithmError` when the algorithm cannot be used
    here (rather than report the signature invalid).
    """
    return _verify(public_key, algorithm, digest, signature)


def _verify(public_key: PublicKey, algorithm: HashAlgo, digest: bytes, signature: bytes) -> bool:
    prehashed = utils.Prehashed(_crypto_hash(algorithm))
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        else:
            public_key.verify(signature, digest, ec.ECDSA(prehashed))
    except InvalidSignature:
        return False
    except ValueError:
        # A digest of the wrong length for the algorithm: the signature cannot match it.
        return False
    except UnsupportedAlgorithm as e:
        # Nothing was judged: this OpenSSL cannot verify with the algorithm. Not the same as
        # a signature that does not verify.
        raise UnsupportedAlgorithmError(
            f"this OpenSSL cannot verify a {algorithm.name} signature with "
            f"{_describe(public_key)} ({e})",
            algorithm.name,
        ) from e
    return True


def digest_verifier(public_key: PublicKey, algorithm: HashAlgo) -> Callable[[bytes, bytes], bool]:
    """``check(digest, signature) -> bool`` for many signatures by one key and algorithm.

    The same test as :func:`_verify` with the padding and hash objects made once (a tree
    verify makes tens of thousands of calls). An algorithm this OpenSSL cannot use gives
    False here, not an error: the caller asks :func:`_verify` for the reason.
    """
    prehashed = utils.Prehashed(_crypto_hash(algorithm))
    verify = public_key.verify
    scheme: Any = (
        padding.PKCS1v15() if isinstance(public_key, rsa.RSAPublicKey) else ec.ECDSA(prehashed)
    )
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)

    def check(digest: bytes, signature: bytes) -> bool:
        try:
            if is_rsa:
                verify(signature, digest, scheme, prehashed)  # type: ignore[call-arg]
            else:
                verify(signature, digest, scheme)  # type: ignore[call-arg]
        except (InvalidSignature, ValueError, UnsupportedAlgorithm):
            return False
        return True

    return check


@dataclass(frozen=True, eq=False)
class Certificate:
    """A trusted X.509 certificate, with the key ids the kernel and evmctl compute."""

    x509: x509.Certificate
    source: str = ""

    @property
    def public_key(self) -> PublicKey:
        memo = self.__dict__.get("_public_key")
        if memo is None:
            memo = _check_supported(self.x509.public_key(), self.source or "certificate")
            self.__dict__["_public_key"] = memo  # immutable: parsed once
        return memo

    @property
    def skid_key_id(self) -> int | None:
        """Last 4 bytes of the Subject Key Identifier (the kernel's lookup), if present."""
        try:
            ext = self.x509.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return None
        digest = ext.value.digest
        if len(digest) < 4:
            return None
        return int.from_bytes(digest[-4:], "big")

    @property
    def public_key_id(self) -> int:
        """Last 4 bytes of SHA-1 of the public key (evmctl's id)."""
        return key_id_from_public_key(self.public_key)

    @property
    def key_id(self) -> int:
        """The id a signature made with this certificate's key carries (SKID first)."""
        skid = self.skid_key_id
        return skid if skid is not None else self.public_key_id

    @property
    def key_ids(self) -> frozenset[int]:
        """Every id this certificate answers to."""
        ids = {self.public_key_id}
        skid = self.skid_key_id
        if skid is not None:
            ids.add(skid)
        return frozenset(ids)

    @property
    def description(self) -> str:
        memo = self.__dict__.get("_description")
        if memo is None:
            memo = f"{_describe(self.public_key)} {self.x509.subject.rfc4514_string()}"
            self.__dict__["_description"] = memo
        return str(memo)

    def verifies(self, algorithm: HashAlgo, digest: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's signature over the prehashed ``digest``."""
        return _verify(self.public_key, algorithm, digest, signature)

    def verify_digest(self, algorithm: HashAlgo, digest: bytes, signature: bytes) -> None:
        """Raise VerificationError unless ``signature`` verifies over ``digest``."""
        if not self.verifies(algorithm, digest, signature):
            raise VerificationError(f"signature does not verify with {self.description}")

    def der(self) -> bytes:
        return self.x509.public_bytes(serialization.Encoding.DER)

    def pem(self) -> bytes:
        return self.x509.public_bytes(serialization.Encoding.PEM)


class PrehashedSigner(abc.ABC):
    """A private key that signs a prehashed digest itself (a key on a PKCS#11 token).

    ``cryptography``'s interfaces hand a key only a ``Prehashed`` wrapper, which does not
    say which algorithm the digest is of; a token key needs the name to build the RSA
    DigestInfo, so :meth:`PrivateKey.sign_digest` calls :meth:`sign_prehashed` instead.
    """

    @abc.abstractmethod
    def sign_prehashed(self, hash_name: str, digest: bytes) -> bytes:
        """Sign ``digest`` (of ``hash_name``): RSA PKCS#1 v1.5 or DER-encoded ECDSA."""


@dataclass(frozen=True, eq=False)
class PrivateKey:
    """A signing key (RSA 2048-4096 or ECDSA P-256/P-384) and the key id it signs with."""

    key: _PrivateKeyTypes
    certificate: Certificate | None = None
    source: str = ""
    _key_id: int | None = field(default=None, repr=False)

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    @property
    def key_id(self) -> int:
        """The id written into signatures: explicit, else the certificate's, else evmctl's."""
        if self._key_id is not None:
            return self._key_id
        if self.certificate is not None:
            return self.certificate.key_id
        return key_id_from_public_key(self.public_key)

    @property
    def description(self) -> str:
        return _describe(self.public_key)

    def with_certificate(self, certificate: Certificate) -> PrivateKey:
        """This key, signing with ``certificate``'s key id; refuses a mismatched certificate."""
        if certificate.public_key.public_numbers() != self.public_key.public_numbers():
            raise KeyLoadError(
                f"{certificate.source or 'certificate'}: its public key does not match "
                f"the private key {self.source or ''}".rstrip()
            )
        return PrivateKey(self.key, certificate, self.source, self._key_id)

    def with_key_id(self, key_id: int) -> PrivateKey:
        """This key, writing ``key_id`` into signatures (as ``evmctl --keyid``)."""
        if not 0 <= key_id <= 0xFFFFFFFF:
            raise KeyLoadError(f"key id {key_id:#x} does not fit 4 bytes")
        return PrivateKey(self.key, self.certificate, self.source, key_id)

    def sign_digest(self, algorithm: HashAlgo, digest: bytes) -> bytes:
        """Sign a prehashed digest: RSA PKCS#1 v1.5 (DigestInfo) or ECDSA (DER r,s)."""
        if len(digest) != algorithm.digest_size:
            raise FormatError(
                f"{algorithm.name} digest must be {algorithm.digest_size} bytes, got {len(digest)}"
            )
        prehashed = utils.Prehashed(_crypto_hash(algorithm))
        if isinstance(self.key, PrehashedSigner):
            return self.key.sign_prehashed(algorithm.name, digest)
        try:
            if isinstance(self.key, rsa.RSAPrivateKey):
                return self.key.sign(digest, padding.PKCS1v15(), prehashed)
            return self.key.sign(digest, ec.ECDSA(prehashed))
        except (ValueError, UnsupportedAlgorithm) as e:
            raise KeyLoadError(
                f"cannot sign a {algorithm.name} digest with {self.description}: {e}"
            ) from e


def _read(source: str | os.PathLike[str] | bytes, what: str) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, f"<{what} bytes>"
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            return f.read(), path
    except OSError as e:
        raise KeyLoadError(f"{path}: cannot read {what}: {e.strerror or e}") from e


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None:
        env = os.environ.get(PASSWORD_ENV)
        return env.encode() if env else None
    return password.encode() if isinstance(password, str) else password


def load_private_key(
    source: str | os.PathLike[str] | bytes, password: str | bytes | None = None
) -> PrivateKey:
    """Load a PEM or DER private key (PKCS#8 or traditional), encrypted or not.

    ``password`` defaults to the environment variable ``IMAGUARD_KEY_PASSWORD``. A PEM
    file that also holds a certificate (key and certificate concatenated, as evmctl
    accepts) signs with that certificate's key id.
    """
    data, where = _read(source, "private key")
    explicit = password is not None
    pw = _password_bytes(password)
    loader = (
        serialization.load_pem_private_key
        if b"-----BEGIN" in data
        else serialization.load_der_private_key
    )
    # Whether the key is encrypted is found by loading it without a password (the
    # library raises TypeError exactly when one is needed), never from a message text.
    try:
        try:
            key = loader(data, password=None)
            encrypted = False
        except TypeError:
            encrypted = True
        if not encrypted and explicit:
            raise KeyLoadError(f"{where}: a password was given but the key is not encrypted")
        if encrypted:
            if pw is None:
                raise KeyLoadError(
                    f"{where}: the private key is encrypted; give its password "
                    f"(--pass or {PASSWORD_ENV})"
                )
            try:
                key = loader(data, password=pw)
            except ValueError as e:
                raise KeyLoadError(f"{where}: wrong password for the encrypted private key") from e
    except ValueError as e:
        raise KeyLoadError(f"{where}: not a PEM or DER private key ({e})") from e
    except UnsupportedAlgorithm as e:
        raise UnsupportedAlgorithmError(
            f"{where}: unsupported key algorithm ({e})", "private key"
        ) from e
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyLoadError(f"{where}: {type(key).__name__} keys are not supported (RSA or ECDSA)")
    _check_supported(key.public_key(), where)
    private = PrivateKey(key, None, where)
    if b"-----BEGIN CERTIFICATE-----" in data:
        certs = load_certificates(data)
        for cert in certs:
            if cert.public_key.public_numbers() == key.public_key().public_numbers():
                return private.with_certificate(Certificate(cert.x509, where))
    return private


def load_certificates(source: str | os.PathLike[str] | bytes) -> list[Certificate]:
    """Load every certificate in a PEM file (one or more) or a DER file."""
    data, where = _read(source, "certificate")
    try:
        if b"-----BEGIN" in data:
            loaded = x509.load_pem_x509_certificates(data)
        else:
            loaded = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise KeyLoadError(f"{where}: not a PEM or DER X.509 certificate ({e})") from e
    certs = [Certificate(c, where) for c in loaded]
    for cert in certs:
        _check_supported(cert.x509.public_key(), where)
    return certs


def iter_certificate_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand directories to their certificate files (.pem .der .crt .cer .x509), sorted."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(
                c
                for c in path.iterdir()
                if c.is_file() and c.suffix.lower() in {".pem", ".der", ".crt", ".cer", ".x509"}
            )
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise KeyLoadError(f"{path}: no such certificate file or directory")
    return out
