"""Keylime runtime policies (format version 1), read and written.

Keylime's ``RUNTIME_POLICY_SCHEMA`` (keylime/ima/ima.py; Keylime's documentation on
runtime policies). Every top-level key is required by Keylime's schema; hex digests
are lowercase, 40-128 characters. ``verification-keys`` is a JSON *string* holding one
ImaKeyring: ``{"meta":{"version":1},"keyids":[...],"pubkeys":["<base64 DER SPKI>"]}``.

Unlike Keylime, which silently drops the whole exclude list when one regex is invalid,
:meth:`RuntimePolicy.parse` refuses such a policy and names the bad regex.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imaguard.errors import FormatError

__all__ = ["RuntimePolicy"]

_HEX = re.compile(r"[0-9a-f]{40,128}\Z")
_HEX_DIGITS = b"0123456789abcdef"
_LOG_HASH_ALGS = ("sha1", "sha256", "sha384", "sha512")
_REQUIRED = (
    "meta",
    "release",
    "digests",
    "excludes",
    "keyrings",
    "ima",
    "ima-buf",
    "verification-keys",
)


def _digest_map(value: Any, what: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise FormatError(f"runtime policy: {what} must be an object")
    lists = list(value.values())
    if set(map(type, lists)) <= {list} and set(map(type, value)) <= {str}:
        # The common case checked in bulk (a policy holds ~10^5 digests): every digest a
        # str, their lengths in range, all of them joined only lowercase hex digits.
        flat = list(itertools.chain.from_iterable(lists))
        if set(map(type, flat)) <= {str} and all(40 <= n <= 128 for n in set(map(len, flat))):
            joined = "".join(flat)
            if joined.isascii() and not joined.encode().translate(None, _HEX_DIGITS):
                return dict(zip(value, map(tuple, lists), strict=True))
    out: dict[str, tuple[str, ...]] = {}
    for key, digests in value.items():
        if not isinstance(digests, list):
            raise FormatError(f"runtime policy: {what}[{key!r}] must be a list")
        for d in digests:
            if not isinstance(d, str) or not _HEX.match(d):
                raise FormatError(
                    f"runtime policy: {what}[{key!r}] has a bad digest {d!r} "
                    "(lowercase hex, 40-128 characters)"
                )
        out[str(key)] = tuple(digests)
    return out


@dataclass(frozen=True)
class RuntimePolicy:
    """A Keylime runtime policy."""

    digests: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    excludes: tuple[str, ...] = ()
    keyrings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ima_buf: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ignored_keyrings: tuple[str, ...] = ()
    log_hash_alg: str = "sha1"
    verification_keys: str = ""
    generator: int = 0
    release: int = 0
    timestamp: str | None = None

    def __post_init__(self) -> None:
        if self.log_hash_alg not in _LOG_HASH_ALGS:
            raise FormatError(
                f"runtime policy: ima.log_hash_alg {self.log_hash_alg!r} "
                f"(one of {', '.join(_LOG_HASH_ALGS)})"
            )
        for pattern in self.excludes:
            try:
                re.compile(pattern)
            except re.error as e:
                raise FormatError(
                    f"runtime policy: exclude {pattern!r} is not a valid regular expression ({e})"
                ) from None
        if not 0 <= self.generator <= 3:
            raise FormatError(f"runtime policy: meta.generator {self.generator} (0-3)")

    @property
    def exclude_regex(self) -> re.Pattern[str] | None:
        """The excludes joined as Keylime does: ``(a)|(b)``, applied with ``re.match``."""
        if not self.excludes:
            return None
        return re.compile("|".join(f"({p})" for p in self.excludes))

    def public_keys(self) -> list[tuple[int | None, bytes]]:
        """``(keyid or None, DER SubjectPublicKeyInfo)`` from ``verification-keys``."""
        if not self.verification_keys:
            return []
        try:
            ring = json.loads(self.verification_keys)
            ids = list(ring.get("keyids", []))
            keys = [base64.b64decode(k) for k in ring.get("pubkeys", [])]
        except (ValueError, TypeError, AttributeError) as e:
            raise FormatError(
                f"runtime policy: verification-keys is not an ImaKeyring ({e})"
            ) from e
        return [(ids[i] if i < len(ids) else None, k) for i, k in enumerate(keys)]

    @staticmethod
    def keyring_string(pubkeys_der: list[bytes], keyids: list[int] | None = None) -> str:
        """The ``verification-keys`` string for these public keys."""
        return json.dumps(
            {
                "meta": {"version": 1},
                "keyids": keyids or [],
                "pubkeys": [base64.b64encode(k).decode() for k in pubkeys_der],
            }
        )

    @classmethod
    def parse(cls, text: str | bytes) -> RuntimePolicy:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise FormatError(f"runtime policy: not JSON ({e})") from None
        except RecursionError:
            raise FormatError("runtime policy: JSON nested too deeply") from None
        if not isinstance(doc, dict):
            raise FormatError("runtime policy: the top level must be an object")
        missing = [k for k in _REQUIRED if k not in doc]
        if missing:
            raise FormatError(f"runtime policy: missing {', '.join(missing)}")
        meta, ima = doc["meta"], doc["ima"]
        if not isinstance(meta, dict) or meta.get("version") != 1:
            raise FormatError("runtime policy: meta.version must be 1")
        if not isinstance(ima, dict):
            raise FormatError("runtime policy: ima must be an object")
        if ima.get("dm_policy") is not None:
            raise FormatError("runtime policy: ima.dm_policy must be null")
        excludes = doc["excludes"]
        if not isinstance(excludes, list) or not all(isinstance(x, str) for x in excludes):
            raise FormatError("runtime policy: excludes must be a list of strings")
        vkeys = doc["verification-keys"]
        if not isinstance(vkeys, str):
            raise FormatError("runtime policy: verification-keys must be a string")
        ignored = ima.get("ignored_keyrings", [])
        if not isinstance(ignored, list):
            raise FormatError("runtime policy: ima.ignored_keyrings must be a list")
        try:
            generator = int(meta.get("generator", 0))
            release = int(doc["release"])
        except (TypeError, ValueError, OverflowError) as e:  # OverflowError: 1e999 is inf
            raise FormatError(
                f"runtime policy: meta.generator/release must be integers ({e})"
            ) from None
        return cls(
            digests=_digest_map(doc["digests"], "digests"),
            excludes=tuple(excludes),
            keyrings=_digest_map(doc["keyrings"], "keyrings"),
            ima_buf=_digest_map(doc["ima-buf"], "ima-buf"),
            ignored_keyrings=tuple(str(x) for x in ignored),
            log_hash_alg=str(ima.get("log_hash_alg", "sha1")),
            verification_keys=vkeys,
            generator=generator,
            release=release,
            timestamp=meta.get("timestamp"),
        )

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"version": 1, "generator": self.generator}
        if self.timestamp is not None:
            meta["timestamp"] = self.timestamp
        return {
            "meta": meta,
            "release": self.release,
            "digests": {k: list(v) for k, v in sorted(self.digests.items())},
            "excludes": list(self.excludes),
            "keyrings": {k: list(v) for k, v in sorted(self.keyrings.items())},
            "ima": {
                "ignored_keyrings": list(self.ignored_keyrings),
                "log_hash_alg": self.log_hash_alg,
                "dm_policy": None,
            },
            "ima-buf": {k: list(v) for k, v in sorted(self.ima_buf.items())},
            "verification-keys": self.verification_keys,
        }

    def serialize(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"
