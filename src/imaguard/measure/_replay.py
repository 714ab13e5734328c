"""The one replay of a measurement log: PCR banks extended record by record; no I/O.

Both the log store (opening a state directory) and log verification replay through
:class:`Replay`. It follows the kernel (>= 5.8) and evmctl: each bank is extended with the
record's template data hashed in that bank's algorithm, or with 0xFF bytes for a violation
(a record whose stored digest is all zeros). As it goes it checks each stored digest
against the template data and, given expected PCR values, tracks where the replay equals
them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from imaguard.formats.measurelist import RawRecord
from imaguard.measure._pcr import NUM_PCRS

__all__ = ["Replay"]


class Replay:
    """Replay raw records into PCR banks (see the module doc).

    ``digest_bank`` is the bank of the records' stored digests (the binary list's SHA-1,
    or an ASCII list's column). ``expected`` maps bank -> PCR index -> value; then
    :attr:`matched_at` is the number of records after which the replay last equalled every
    expected value (0: before the first record), or None while it never has.
    """

    def __init__(
        self,
        banks: Iterable[str],
        *,
        digest_bank: str = "sha1",
        expected: Mapping[str, Mapping[int, bytes]] | None = None,
    ) -> None:
        exp = {b: dict(v) for b, v in (expected or {}).items()}
        self.banks: tuple[str, ...] = tuple(dict.fromkeys((*banks, *exp)))
        ctor = {b: getattr(hashlib, b) for b in self.banks}
        self.pcrs: dict[str, list[bytes]] = {
            b: [b"\0" * ctor[b]().digest_size] * NUM_PCRS for b in self.banks
        }
        self.zero = b"\0" * getattr(hashlib, digest_bank)().digest_size
        """The stored digest of a violation record."""
        self.count = 0
        """Records replayed so far."""
        # One step per bank: (constructor, that bank's PCRs, its 0xFF value, the checked bank?)
        self._plan = [
            (ctor[b], self.pcrs[b], b"\xff" * ctor[b]().digest_size, b == digest_bank)
            for b in self.banks
        ]
        self._check = None if digest_bank in self.banks else getattr(hashlib, digest_bank)
        # Expected values by PCR index, so a record only re-checks the PCR it extended.
        self._watch: dict[int, list[tuple[list[bytes], bytes, int]]] = {}
        self._state: list[bool] = []
        for b, vals in exp.items():
            for i, v in vals.items():
                self._watch.setdefault(i, []).append((self.pcrs[b], v, len(self._state)))
                self._state.append(self.pcrs[b][i] == v)
        self._mismatched = self._state.count(False)
        self.expecting = bool(self._state)
        self.matched_at: int | None = 0 if self.expecting and self._mismatched == 0 else None

    @property
    def matches(self) -> bool:
        """True when the replay now equals every expected value (False with none given)."""
        return self.expecting and self._mismatched == 0

    def step(self, rec: RawRecord) -> bool:
        """Extend with one record; False when its stored digest does not match its data."""
        self.count += 1
        p = rec.pcr
        ok = True
        if rec.digest == self.zero:
            for c, chain, ffv, _ in self._plan:
                chain[p] = c(chain[p] + ffv).digest()
        else:
            td = rec.template_data
            for c, chain, _, is_check in self._plan:
                h = c(td).digest()
                if is_check and h != rec.digest:
                    ok = False
                chain[p] = c(chain[p] + h).digest()
            if self._check is not None and self._check(td).digest() != rec.digest:
                ok = False
        watch = self._watch.get(p)
        if watch is not None:
            state = self._state
            for chain, want, slot in watch:
                now = chain[p] == want
                if now != state[slot]:
                    state[slot] = now
                    self._mismatched += -1 if now else 1
            if self._mismatched == 0:
                self.matched_at = self.count
        return ok

    def used(self) -> list[int]:
        """The PCR indexes some record extended (those no longer all zeros)."""
        return sorted(
            {i for b in self.banks for i, v in enumerate(self.pcrs[b]) if v != b"\0" * len(v)}
        )

    @staticmethod
    def extend_values(rec: RawRecord, banks: Iterable[str]) -> dict[str, bytes]:
        """What the record extends each bank with (as :meth:`step` does)."""
        out = {}
        violation = not any(rec.digest)
        for b in banks:
            h = getattr(hashlib, b)
            out[b] = b"\xff" * h().digest_size if violation else h(rec.template_data).digest()
        return out
