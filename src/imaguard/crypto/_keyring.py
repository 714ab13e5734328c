"""Keyrings: named sets of trusted certificates, with revoked keys and a digest blacklist.

A keyring is immutable; ``revoke`` and ``blacklist`` return a new keyring. Lookup is by
the 4-byte key id of a signature header, matched against both ids a certificate
answers to (the SKID-derived id the kernel uses and the public-key id evmctl uses;
see :mod:`imaguard.crypto._keys`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from imaguard.crypto._keys import Certificate, iter_certificate_files, load_certificates
from imaguard.errors import KeyLoadError

__all__ = ["Keyring"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Keyring:
    """A named, immutable set of trusted certificates."""

    name: str = "_ima"
    certificates: tuple[Certificate, ...] = ()
    revoked_key_ids: frozenset[int] = frozenset()
    blacklisted_digests: frozenset[bytes] = frozenset()
    _index: dict[int, tuple[Certificate, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index: dict[int, list[Certificate]] = {}
        for cert in self.certificates:
            for key_id in cert.key_ids:
                index.setdefault(key_id, []).append(cert)
        self._index.update({k: tuple(v) for k, v in index.items()})

    @classmethod
    def load(cls, *paths: str | os.PathLike[str], name: str = "_ima") -> Keyring:
        """Load certificate files (PEM bundles or DER) and directories of them.

        In a directory, files ending in .pem .der .crt .cer .x509 are read; a PEM file
        that holds only a key (private or public, no certificate) is passed over. The
        same certificate given twice counts once. An empty result is an error: a keyring
        that trusts nothing would make every verification fail for a reason the user did
        not mean.
        """
        certs: list[Certificate] = []
        seen: set[bytes] = set()
        explicit = {os.fspath(p) for p in paths if not os.path.isdir(p)}
        for path in iter_certificate_files(paths):
            if str(path) not in explicit:
                try:
                    head = path.read_bytes()
                except OSError as e:
                    raise KeyLoadError(f"{path}: cannot read certificate: {e.strerror}") from e
                if b"KEY-----" in head and b"CERTIFICATE-----" not in head:
                    _log.debug("skipping key file %s in keyring directory", path)
                    continue
            for cert in load_certificates(path):
                der = cert.der()
                if der in seen:
                    continue
                seen.add(der)
                certs.append(cert)
        if not certs:
            where = ", ".join(os.fspath(p) for p in paths) or "(nothing given)"
            raise KeyLoadError(f"keyring {name}: no certificates found in {where}")
        return cls(name, tuple(certs))

    @classmethod
    def of(cls, certificates: Iterable[Certificate], name: str = "_ima") -> Keyring:
        return cls(name, tuple(certificates))

    def lookup(self, key_id: int) -> tuple[Certificate, ...]:
        """Certificates answering to ``key_id`` (empty when the key is unknown)."""
        return self._index.get(key_id, ())

    def is_revoked(self, key_id: int) -> bool:
        return key_id in self.revoked_key_ids

    def is_blacklisted(self, digest: bytes) -> bool:
        return bytes(digest) in self.blacklisted_digests

    def revoke(self, *key_ids: int) -> Keyring:
        """A keyring in which signatures by these key ids are refused."""
        return Keyring(
            self.name,
            self.certificates,
            self.revoked_key_ids | frozenset(key_ids),
            self.blacklisted_digests,
        )

    def blacklist(self, *digests: bytes) -> Keyring:
        """A keyring that refuses files with these content digests, signed or not."""
        return Keyring(
            self.name,
            self.certificates,
            self.revoked_key_ids,
            self.blacklisted_digests | frozenset(bytes(d) for d in digests),
        )

    def __len__(self) -> int:
        return len(self.certificates)

    def fingerprint(self) -> str:
        """A short sha256 over the certificates, revocations and blacklist (for caches)."""
        memo = self._index.get(-1)
        if memo is not None:
            return str(memo)
        h = hashlib.sha256()
        for cert in self.certificates:
            h.update(cert.der())
        for key_id in sorted(self.revoked_key_ids):
            h.update(key_id.to_bytes(4, "big"))
        for digest in sorted(self.blacklisted_digests):
            h.update(digest)
        value = h.hexdigest()[:16]
        self._index[-1] = value  # type: ignore[assignment]  # memo slot; key ids are >= 0
        return value
