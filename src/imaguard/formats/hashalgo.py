"""The kernel's hash-algorithm table (``enum hash_algo``, include/uapi/linux/hash_info.h).

Ids 0-22 are an ABI: they appear in ``security.ima`` values and signature headers.
Names are the kernel's spellings, used in ``ima_hash=``, ``appraise_algos=`` and the
``d-ng`` template field. ``hashlib_name`` is the name hashlib knows the algorithm by,
and :attr:`HashAlgo.computable` says whether this Python can compute it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from imaguard.errors import FormatError

__all__ = ["ALGORITHMS", "HashAlgo", "by_id", "by_name", "computable_names"]


def _probe(hashlib_name: str | None) -> bool:
    if hashlib_name is None:
        return False
    try:
        hashlib.new(hashlib_name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HashAlgo:
    """One row of the kernel's hash-algorithm table."""

    id: int
    name: str
    digest_size: int
    hashlib_name: str | None

    @property
    def computable(self) -> bool:
        """True when this Python (hashlib over OpenSSL) can compute the algorithm."""
        known = _COMPUTABLE.get(self.id)
        if known is None:
            known = _COMPUTABLE[self.id] = _probe(self.hashlib_name)
        return known

    def new(self) -> Any:
        """A new hashlib object for this algorithm; FormatError when it cannot be computed."""
        if not self.computable or self.hashlib_name is None:
            raise FormatError(f"hash algorithm {self.name} cannot be computed here")
        return hashlib.new(self.hashlib_name)

    def __str__(self) -> str:
        return self.name


ALGORITHMS: tuple[HashAlgo, ...] = (
    HashAlgo(0, "md4", 16, "md4"),
    HashAlgo(1, "md5", 16, "md5"),
    HashAlgo(2, "sha1", 20, "sha1"),
    HashAlgo(3, "rmd160", 20, "ripemd160"),
    HashAlgo(4, "sha256", 32, "sha256"),
    HashAlgo(5, "sha384", 48, "sha384"),
    HashAlgo(6, "sha512", 64, "sha512"),
    HashAlgo(7, "sha224", 28, "sha224"),
    HashAlgo(8, "rmd128", 16, None),
    HashAlgo(9, "rmd256", 32, None),
    HashAlgo(10, "rmd320", 40, None),
    HashAlgo(11, "wp256", 32, None),
    HashAlgo(12, "wp384", 48, None),
    HashAlgo(13, "wp512", 64, "whirlpool"),
    HashAlgo(14, "tgr128", 16, None),
    HashAlgo(15, "tgr160", 20, None),
    HashAlgo(16, "tgr192", 24, None),
    HashAlgo(17, "sm3", 32, "sm3"),
    HashAlgo(18, "streebog256", 32, None),
    HashAlgo(19, "streebog512", 64, None),
    HashAlgo(20, "sha3-256", 32, "sha3_256"),
    HashAlgo(21, "sha3-384", 48, "sha3_384"),
    HashAlgo(22, "sha3-512", 64, "sha3_512"),
)

HASH_ALGO_LAST = 23
"""``HASH_ALGO__LAST``: ids at or above it are invalid."""

HASH_MAX_DIGESTSIZE = 64

_BY_NAME = {a.name: a for a in ALGORITHMS}
_COMPUTABLE: dict[int, bool] = {}
"""Probed on first use: asking OpenSSL about every algorithm at import costs milliseconds."""


def by_id(algo_id: int) -> HashAlgo:
    """The algorithm with kernel id ``algo_id``; FormatError for an unknown id."""
    if not 0 <= algo_id < HASH_ALGO_LAST:
        raise FormatError(f"unknown hash algorithm id {algo_id} (valid ids are 0-22)")
    return ALGORITHMS[algo_id]


def by_name(name: str) -> HashAlgo:
    """The algorithm with kernel name ``name`` (case-insensitive); FormatError if unknown."""
    algo = _BY_NAME.get(name.strip().lower())
    if algo is None:
        known = ", ".join(a.name for a in ALGORITHMS)
        raise FormatError(f"unknown hash algorithm {name!r} (known: {known})")
    return algo


def computable_names() -> list[str]:
    """Kernel names of the algorithms this Python can compute."""
    return [a.name for a in ALGORITHMS if a.computable]
