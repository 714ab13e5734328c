"""PCR banks: software PCRs, the PCR backend interface, and boot_aggregate.

A PCR bank is one hash algorithm's set of 24 PCRs. Extending PCR *i* of bank *H* with
*v* sets ``PCR = H(PCR || v)``; IMA extends each bank with the template digest computed
in that bank's algorithm (kernel >= 5.8), or with 0xFF bytes for a violation
(spec kernel-ima.md §4.6).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Protocol

from imaguard.errors import UsageError
from imaguard.formats.hashalgo import by_name
from imaguard.formats.template import TemplateDescriptor, TemplateEntry, encode_digest_ng

__all__ = [
    "BANKS",
    "DEFAULT_BANKS",
    "NUM_PCRS",
    "PcrBackend",
    "SoftwarePcrs",
    "boot_aggregate_entry",
    "compute_boot_aggregate",
]

NUM_PCRS = 24
BANKS = ("sha1", "sha256", "sha384", "sha512")
DEFAULT_BANKS = ("sha1", "sha256")


def check_banks(banks: Iterable[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(banks))
    for b in out:
        if b not in BANKS:
            raise UsageError(f"unknown PCR bank {b!r} (sha1, sha256, sha384, sha512)")
    if not out:
        raise UsageError("at least one PCR bank is needed")
    return out


class PcrBackend(Protocol):
    """Where PCRs live: software values or a TPM."""

    name: str

    def banks(self) -> tuple[str, ...]: ...

    def read(
        self, pcrs: Iterable[int], banks: Iterable[str] | None = None
    ) -> dict[str, dict[int, bytes]]:
        """Current values: bank -> PCR index -> digest."""
        ...

    def extend(self, pcr: int, digests: Mapping[str, bytes]) -> None:
        """Extend one PCR in every bank given (bank -> value of that bank's size)."""
        ...

    def close(self) -> None: ...


class SoftwarePcrs:
    """PCRs kept in memory (the log's replay is their persistence)."""

    name = "software"

    def __init__(self, banks: Iterable[str] = DEFAULT_BANKS) -> None:
        self._banks = check_banks(banks)
        self.values: dict[str, list[bytes]] = {
            b: [b"\0" * hashlib.new(b).digest_size] * NUM_PCRS for b in self._banks
        }

    def banks(self) -> tuple[str, ...]:
        return self._banks

    def read(
        self, pcrs: Iterable[int], banks: Iterable[str] | None = None
    ) -> dict[str, dict[int, bytes]]:
        idx = list(pcrs)
        return {b: {i: self.values[b][i] for i in idx} for b in (banks or self._banks)}

    def extend(self, pcr: int, digests: Mapping[str, bytes]) -> None:
        for bank, value in digests.items():
            vals = self.values[bank]
            vals[pcr] = hashlib.new(bank, vals[pcr] + value).digest()

    def extend_entry(self, entry: TemplateEntry) -> None:
        self.extend(entry.pcr, {b: entry.extend_value(b) for b in self._banks})

    def close(self) -> None:
        pass


def compute_boot_aggregate(
    backend: PcrBackend | None, ima_hash: str = "sha256"
) -> tuple[str, bytes]:
    """``(algorithm, digest)`` of boot_aggregate (spec §4.7).

    With a TPM: the first bank equal to ``ima_hash``, else sha256, else sha1; the digest
    is H(PCR0..7), plus PCR8..9 for non-SHA-1 banks. Without one: zeros of ``ima_hash``.
    """
    if backend is None:
        size = by_name(ima_hash).digest_size
        return ima_hash, b"\0" * size
    banks = backend.banks()
    for choice in (ima_hash, "sha256", "sha1"):
        if choice in banks:
            bank = choice
            break
    else:
        bank = banks[0]
    count = 8 if bank == "sha1" else 10
    values = backend.read(range(count), [bank])[bank]
    h = hashlib.new(bank)
    for i in range(count):
        h.update(values[i])
    return bank, h.digest()


def boot_aggregate_entry(
    template: TemplateDescriptor,
    backend: PcrBackend | None,
    ima_hash: str = "sha256",
    pcr: int = 10,
) -> TemplateEntry:
    """The first entry of every log, in ``template``."""
    algo, digest = compute_boot_aggregate(backend, ima_hash)
    fields: list[bytes] = []
    for fid in template.fields:
        if fid == "d-ng":
            fields.append(encode_digest_ng(algo, digest))
        elif fid == "d-ngv2":
            fields.append(b"ima:" + encode_digest_ng(algo, digest))
        elif fid == "d":
            sha1 = compute_boot_aggregate(backend, "sha1")[1] if backend is not None else b"\0" * 20
            if backend is not None and "sha1" not in backend.banks():
                sha1 = b"\0" * 20
            fields.append(sha1)
        elif fid in ("n-ng", "n"):
            fields.append(b"boot_aggregate\0")
        else:
            fields.append(b"")
    return TemplateEntry(pcr, template, tuple(fields))
