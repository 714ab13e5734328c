"""Typed appraisal results: :class:`Verdict` and :class:`SignatureInfo`.

Statuses follow the kernel's ``enum integrity_status`` (spec kernel-ima.md §3.6), with
one more that the kernel folds into ``fail``: ``unknown-key`` (the signature names a key
the keyring does not hold). Causes are the kernel's audit cause strings (§3.11).

A verdict has no truth value: code that decides must read ``verdict.passed`` or
``verdict.status`` explicitly (``if verdict:`` raises TypeError).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Cause", "SignatureInfo", "Status", "Verdict"]


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
    """The kernel's audit cause strings used by appraisal (spec §3.8, §3.11)."""

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
class SignatureInfo:
    """What is stored for a file, decoded but not verified (no hashing, no key lookup)."""

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

    @property
    def signed(self) -> bool:
        return self.present and self.error is None and self.value_type in (0x03, 0x05, 0x06)

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
        }
