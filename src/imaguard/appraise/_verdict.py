"""Typed appraisal results: :class:`Verdict` and :class:`SignatureInfo`.

Statuses follow the kernel's ``enum integrity_status`` (include/linux/integrity.h), with
one more that the kernel folds into ``fail``: ``unknown-key`` (the signature names a key
the keyring does not hold). Causes are the kernel's audit cause strings (set in
``ima_appraise_measurement()``, security/integrity/ima/ima_appraise.c).

A verdict has no truth value: code that decides must read ``verdict.passed`` or
``verdict.status`` explicitly (``if verdict:`` raises TypeError).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from imaguard.formats.xattr import is_signature

__all__ = ["Cause", "SignatureInfo", "Signer", "Status", "Verdict"]


class Status(StrEnum):
    """Outcome of an appraisal."""

    PASS = "pass"  # noqa: S105 - a status, not a password
    FAIL = "fail"
    NO_XATTR = "no-xattr"
    """No value is stored for the file (the kernel's NOLABEL)."""
    UNKNOWN_KEY = "unknown-key"
    """A signature by a key the keyring does not hold."""
    UNKNOWN = "unknown"
    """The file or its value could not be examined (no xattr support, unreadable, ...)."""

    def __str__(self) -> str:
        return self.value


class Cause:
    """The kernel's audit cause strings used by appraisal (ima_appraise.c, ima_main.c)."""

    MISSING_HASH = "missing-hash"
    SIGNATURE_REQUIRED = "IMA-signature-required"
    VERITY_SIGNATURE_REQUIRED = "verity-signature-required"
    INVALID_HASH = "invalid-hash"
    INVALID_SIGNATURE = "invalid-signature"
    INVALID_SIGNATURE_VERSION = "invalid-signature-version"
    SIGV3_HASHING_ERROR = "sigv3-hashing-error"
    INVALID_VERITY_SIGNATURE = "invalid-verity-signature"
    UNKNOWN_IMA_DATA = "unknown-ima-data"
    DENIED_HASH_ALGORITHM = "denied-hash-algorithm"
    UNKNOWN = "unknown"
    BLACKLISTED_HASH = "blacklisted-hash"
    """Not an audit cause in the kernel (it returns EPERM); the name of its ima-buf event."""


@dataclass(frozen=True)
class Verdict:
    """The result of appraising one file."""

    target: str
    status: Status
    cause: str | None = None
    key_id: int | None = None
    algorithm: str | None = None
    value_type: int | None = None
    digest: bytes | None = None
    detail: str = ""
    signer: str | None = None

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @property
    def key_id_hex(self) -> str | None:
        return None if self.key_id is None else f"{self.key_id:08x}"

    def __bool__(self) -> bool:
        raise TypeError("a Verdict has no truth value; read .passed or .status")

    def describe(self) -> str:
        """One line for a person: status, cause and detail."""
        parts = [str(self.status)]
        if self.cause:
            parts.append(f"({self.cause})")
        if self.detail:
            parts.append(f"- {self.detail}")
        return " ".join(parts)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        """The Verdict of its JSON (:meth:`to_dict`)."""
        return cls(
            d.get("path") or "",
            Status(d["status"]),
            d.get("cause"),
            int(d["key_id"], 16) if d.get("key_id") else None,
            d.get("algorithm"),
            int(d["type"], 16) if d.get("type") else None,
            bytes.fromhex(d["digest"]) if d.get("digest") else None,
            d.get("detail") or "",
            d.get("signer"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.target,
            "status": self.status.value,
            "cause": self.cause,
            "key_id": self.key_id_hex,
            "algorithm": self.algorithm,
            "type": None if self.value_type is None else f"0x{self.value_type:02x}",
            "digest": None if self.digest is None else self.digest.hex(),
            "signer": self.signer,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Signer:
    """The certificate in a keyring whose key id a signature names (not a verification)."""

    subject: str
    key_id: int
    not_before: str
    not_after: str
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "key_id": f"{self.key_id:08x}",
            "not_before": self.not_before,
            "not_after": self.not_after,
            "source": self.source,
        }


@dataclass(frozen=True)
class SignatureInfo:
    """What is stored for a file, decoded but not verified (no hashing).

    With a keyring, ``signer`` names the certificate whose key id the signature carries
    (``keyring_checked`` says a keyring was consulted; ``signer`` None then means no
    certificate there has that key id). Naming is not verifying: only appraisal says the
    signature is that key's and matches the content.
    """

    target: str
    present: bool
    value_type: int | None = None
    type_name: str | None = None
    algorithm: str | None = None
    key_id: int | None = None
    signature_size: int | None = None
    value_size: int | None = None
    digest: bytes | None = None
    error: str | None = None
    store: str = ""
    signer: Signer | None = None
    keyring_checked: bool = False

    @property
    def signed(self) -> bool:
        """A file signature (0x03 or 0x06, see ``formats.xattr.is_signature``) that parses.

        A 0x05 portable EVM signature stored as ``security.ima`` is not one: IMA cannot
        appraise it (``unknown-ima-data``).
        """
        return (
            self.present
            and self.error is None
            and self.value_type is not None
            and is_signature(bytes([self.value_type]))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.target,
            "present": self.present,
            "signed": self.signed,
            "type": None if self.value_type is None else f"0x{self.value_type:02x}",
            "type_name": self.type_name,
            "algorithm": self.algorithm,
            "key_id": None if self.key_id is None else f"{self.key_id:08x}",
            "signature_size": self.signature_size,
            "value_size": self.value_size,
            "digest": None if self.digest is None else self.digest.hex(),
            "store": self.store,
            "error": self.error,
            **(
                {"signer": self.signer.to_dict() if self.signer is not None else None}
                if self.keyring_checked
                else {}
            ),
        }
