"""Verifying a whole measurement log on two cores: :func:`verify_log`.

The result is the one :func:`~imaguard.measure.verify_records` gives for the same log
(the same findings, in the same order, the same PCR values and notes); only the work is
split. A forked child parses the log and checks every template hash (parsing and hashing
are independent per record); meanwhile the parent reads the runtime policy and judges
the records against it, and may parse and hash a tail range of the log itself. The PCR
chains are sequential: each process then replays some of the banks over every record, and
the match with the expected PCR values is combined from both (:func:`combine_matches`).

Nothing per record crosses between the processes: the digests each bank is extended with
travel in a shared anonymous mapping, and the messages are counts and the indexes of the
records that failed. Small logs, a process with other threads (where fork is unsafe), a
single usable CPU or a child that fails all fall back to the one-process path.

The fast loops handle the common records (ima-ng lines and records of templates other
than ``ima``); every other record is read by the format module's own reader, so errors
and odd records are reported exactly as the one-process path reports them. Where the
optional C extension (``imaguard._native``) is built, the ASCII scan, the judging of
ima-ng lines against the policy's digests and the PCR chains run in C; they take the
same lines the Python loops take and hand every other one back (``IMAGUARD_NATIVE=0``
turns them off).
"""

from __future__ import annotations

import binascii
import contextlib
import gc
import hashlib
import logging
import marshal
import mmap
import os
import signal
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from imaguard.errors import FormatError
from imaguard.formats.digestlist import DigestList
from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.measurelist import (
    MAX_PCR,
    MAX_TEMPLATE_DATA,
    RawRecord,
    iter_ascii,
    iter_binary,
)
from imaguard.formats.measurelist import detect as detect_format
from imaguard.formats.template import MAX_TEMPLATE_NAME
from imaguard.measure._pcr import NUM_PCRS
from imaguard.measure._verify import (
    Finding,
    VerifyResult,
    _Judge,
    ascii_bank,
    conclude,
    records_from_ascii,
    records_from_binary,
    verify_records,
)

if TYPE_CHECKING:
    from imaguard.crypto._keyring import Keyring

__all__ = ["PARALLEL_MIN_BYTES", "combine_matches", "verify_log"]

_log = logging.getLogger(__name__)


def _native() -> Any:
    """The C extension's log functions, or None (not built, or IMAGUARD_NATIVE=0)."""
    if os.environ.get("IMAGUARD_NATIVE", "1") == "0":
        return None
    try:
        from imaguard import _native as native
    except ImportError:
        return None
    return native


PARALLEL_MIN_BYTES = 1 << 20
"""Below this size a log is verified in one process (a fork costs more than it saves)."""

_U32 = struct.Struct("<I")
_TEMPLATE_HASH = "stored template digest does not match the template data"
_VIOLATION = "a ToMToU/open-writers violation record"
# Relative costs per byte (measured on the benchmark's ima-ng log, 2 vCPU): parsing and
# hashing a log byte = 1; judging it against a runtime policy ~0.33; parsing a byte of
# runtime policy JSON ~0.8. They set how much of the log the parent hashes itself.
_JUDGE_COST = 0.33
_POLICY_COST = 0.8
# With the C loops (same machine and log): judging a byte ~0.9 of scanning it in C, a
# byte of policy JSON ~1.6. The child then scans the whole log and replays every bank.
_JUDGE_COST_C = 0.9
_POLICY_COST_C = 1.6

PolicyArg = RuntimePolicy | bytes | str | None


def _policy(arg: PolicyArg) -> RuntimePolicy | None:
    if arg is None or isinstance(arg, RuntimePolicy):
        return arg
    return RuntimePolicy.parse(arg)


def verify_log(
    data: bytes,
    *,
    fmt: Literal["ascii", "binary"] | None = None,
    bank: str = "sha1",
    banks: Sequence[str] = ("sha1", "sha256"),
    expected: Mapping[str, Mapping[int, bytes]] | None = None,
    prefix_ok: bool = False,
    keyring: Keyring | None = None,
    runtime_policy: PolicyArg = None,
    ignore_violations: bool = False,
    digest_lists: Sequence[tuple[bytes, DigestList]] = (),
    parallel: bool | None = None,
) -> VerifyResult:
    """Verify a whole log given as bytes, on two cores when it is large enough.

    ``fmt``: the list's format (None: detected); ``bank`` is a binary list's
    template-digest bank (an ASCII list's comes from its digest column's width). The other
    arguments are :func:`~imaguard.measure.verify_records`'s; ``runtime_policy`` may also
    be the policy's JSON text, then parsed while the log is hashed (a bad policy raises
    :class:`~imaguard.FormatError` as ``RuntimePolicy.parse`` does, and nothing is
    reported about the log). ``parallel``: None decides by size and CPUs, False never
    forks, True forks whenever it is safe (tests).
    """
    kind = fmt or detect_format(data)
    digest_bank = ascii_bank(data) if kind == "ascii" else bank
    if _use_fork(len(data), parallel):
        try:
            return _Parallel(
                data,
                kind,
                digest_bank,
                banks,
                expected,
                prefix_ok,
                keyring,
                runtime_policy,
                ignore_violations,
                digest_lists,
            ).run()
        except _ChildFailedError as e:
            _log.warning("parallel log verification failed (%s); verifying in one process", e)
    policy = _policy(runtime_policy)
    if kind == "ascii":
        records, _, problem = records_from_ascii(data)
    else:
        records, problem = records_from_binary(data, digest_bank)
    return verify_records(
        records,
        digest_bank=digest_bank,
        banks=banks,
        expected=expected,
        prefix_ok=prefix_ok,
        keyring=keyring,
        runtime_policy=policy,
        ignore_violations=ignore_violations,
        parse_error=problem,
        digest_lists=digest_lists,
    )


def _use_fork(size: int, parallel: bool | None) -> bool:
    if parallel is False or not hasattr(os, "fork") or threading.active_count() != 1:
        return False
    if parallel:
        return True
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - every Linux has it
        cpus = os.cpu_count() or 1
    return cpus >= 2 and size >= PARALLEL_MIN_BYTES


class _ChildFailedError(Exception):
    """The child did not deliver its part (died, or sent something unreadable)."""


# -- the scans: parse a range of the log and hash every record in every bank -----------


@dataclass
class Scan:
    """What a scan of a range of records found (indexes relative to the range's first)."""

    count: int = 0
    pcrs: bytearray = field(default_factory=bytearray)
    """One byte per record: the PCR it extends."""
    values: list[bytes | bytearray] = field(default_factory=list)
    """Per bank (in the order given): what each record extends that bank with, the
    digests concatenated."""
    failures: list[int] = field(default_factory=list)
    """Records whose stored digest does not match their template data."""
    violations: list[int] = field(default_factory=list)
    error: tuple[str, int] | None = None
    """The parse error that ended the range: its message, and the records before it."""


def _hash_all(
    scan: Scan,
    tds: list[bytes],
    stored: list[bytes],
    digest_bank: str,
    banks: Sequence[str],
) -> None:
    """Fill ``scan.values`` and ``scan.failures`` from each record's template data and
    stored digest (a violation's template data is never hashed: it extends with 0xFF)."""
    viols = scan.violations
    per_bank = []
    for b in banks:
        ctor = getattr(hashlib, b)
        hs = [ctor(td).digest() for td in tds]
        if viols:
            ff = b"\xff" * ctor().digest_size
            for i in viols:
                hs[i] = ff
        per_bank.append(hs)
        scan.values.append(b"".join(hs))
    if digest_bank in banks:
        check = per_bank[list(banks).index(digest_bank)]
    else:
        ctor = getattr(hashlib, digest_bank)
        check = [ctor(td).digest() for td in tds]
    if viols:
        stored = list(stored)
        for i in viols:
            stored[i] = check[i]
    if check != stored:
        scan.failures = [i for i, (h, s) in enumerate(zip(check, stored, strict=True)) if h != s]


def _one_ascii(line: bytes, bank: str, number: int, index: int) -> RawRecord:
    """One line through the format module's own reader, numbered as in the whole list."""
    try:
        (rec,) = iter_ascii(line, bank)
    except FormatError as e:
        raise FormatError(str(e).replace("line 1", f"line {number}", 1)) from None
    return rec._replace(index=index, offset=number)


_PCR_COLUMN = {str(i).encode(): i for i in range(MAX_PCR)}
_PCR_TEXT = {str(i) for i in range(MAX_PCR)}


def scan_ascii(
    text: bytes,
    start: int,
    end: int,
    first_line: int,
    digest_bank: str,
    banks: Sequence[str],
) -> Scan:
    """Scan the lines of ``text[start:end]`` (whole lines; the first is line
    ``first_line`` of the list)."""
    native = _native()
    if native is None:
        return _scan_ascii_py(text, start, end, first_line, digest_bank, banks)
    names = tuple(banks)
    try:
        for b in {digest_bank, *names}:
            hashlib.new(b)
    except ValueError:  # pragma: no cover - banks come from the hash table
        return _scan_ascii_py(text, start, end, first_line, digest_bank, banks)
    size = hashlib.new(digest_bank).digest_size
    zero = b"\0" * size
    scan = Scan()
    values = [bytearray() for _ in names]
    scan.values = list(values)
    pos = start
    counted, number = start, first_line  # line number of the line at byte `counted`
    while True:
        stop, count, pcrs, vals, fails, viols = native.scan_ima_ng(
            text, pos, end, digest_bank, names
        )
        base = scan.count
        scan.pcrs += pcrs
        for v, more in zip(values, vals, strict=True):
            v += more
        scan.failures += [base + i for i in fails] if base else fails
        scan.violations += [base + i for i in viols] if base else viols
        scan.count += count
        if stop >= end:
            break
        # A line the C loop does not take: the format module's reader reads it.
        number += text.count(b"\n", counted, stop)
        counted = stop
        nl = text.find(b"\n", stop, end)
        line_end = end if nl < 0 else nl
        try:
            rec = _one_ascii(text[stop:line_end], digest_bank, number, scan.count)
        except FormatError as e:
            scan.error = (str(e), scan.count)
            break
        scan.pcrs.append(rec.pcr)
        viol = rec.digest == zero
        for v, b in zip(values, names, strict=True):
            h = hashlib.new(b, rec.template_data).digest()
            v += b"\xff" * len(h) if viol else h
        if viol:
            scan.violations.append(scan.count)
        elif hashlib.new(digest_bank, rec.template_data).digest() != rec.digest:
            scan.failures.append(scan.count)
        scan.count += 1
        pos = line_end + 1
        if pos >= end:
            break
    return scan


def _scan_ascii_py(
    text: bytes,
    start: int,
    end: int,
    first_line: int,
    digest_bank: str,
    banks: Sequence[str],
) -> Scan:
    """:func:`scan_ascii` in Python."""
    size = hashlib.new(digest_bank).digest_size
    hexsize = 2 * size
    zero = b"\0" * size
    pack = _U32.pack
    unhex = binascii.unhexlify
    pcr_of = _PCR_COLUMN
    scan = Scan()
    pcrs = scan.pcrs
    tds: list[bytes] = []
    stored: list[bytes] = []
    add_pcr, add_td, add_stored = pcrs.append, tds.append, stored.append
    viols = scan.violations
    heads: dict[bytes, tuple[bytes, int]] = {}
    number = first_line - 1
    index = 0
    for line in text[start:end].split(b"\n"):
        number += 1
        if not line:
            continue
        parts = line.split(b" ")
        if len(parts) == 5 and parts[2] == b"ima-ng" and len(parts[1]) == hexsize:
            pcr = pcr_of.get(parts[0])
            dng = parts[3]
            colon = dng.find(b":")
            if pcr is not None and colon >= 0 and dng.isascii():
                try:
                    digest = unhex(parts[1])
                    fd = unhex(dng[colon + 1 :])
                except ValueError:
                    pass
                else:
                    # u32 len | "algo:" NUL digest | u32 len | name NUL; the head is the
                    # same for every digest of one algorithm.
                    algo = dng[: colon + 1]
                    head, fdlen = heads.get(algo, (b"", -1))
                    if fdlen != len(fd):
                        head = pack(colon + 2 + len(fd)) + algo + b"\0"
                        heads[algo] = (head, len(fd))
                    name = parts[4]
                    add_pcr(pcr)
                    add_td(b"".join((head, fd, pack(len(name) + 1), name, b"\0")))
                    add_stored(digest)
                    if digest == zero:
                        viols.append(index)
                    index += 1
                    continue
        try:
            rec = _one_ascii(line, digest_bank, number, index)
        except FormatError as e:
            scan.error = (str(e), index)
            break
        add_pcr(rec.pcr)
        add_td(rec.template_data)
        add_stored(rec.digest)
        if rec.digest == zero:
            viols.append(index)
        index += 1
    scan.count = index
    _hash_all(scan, tds, stored, digest_bank, banks)
    return scan


def _one_binary(mv: memoryview, pos: int, bank: str, index: int) -> RawRecord:
    """The record at ``pos`` through the format module's own reader (its errors name the
    record's index and byte offset in the whole list)."""
    try:
        rec = next(iter_binary(mv[pos:], bank))
    except FormatError as e:
        raise FormatError(
            str(e).replace("record 0 at byte 0", f"record {index} at byte {pos}", 1)
        ) from None
    return rec._replace(index=index, offset=pos)


def _next_binary(mv: memoryview, pos: int, size: int) -> int:
    """Where the binary record at ``pos`` ends, or -1 when the format module's reader
    would refuse it (truncated, oversized or out-of-range fields)."""
    end = len(mv)
    if end - pos < 8 + size:
        return -1
    (pcr,) = _U32.unpack_from(mv, pos)
    (nlen,) = _U32.unpack_from(mv, pos + 4 + size)
    pos += 8 + size
    if pcr >= MAX_PCR or not 0 < nlen <= MAX_TEMPLATE_NAME or end - pos < nlen + 4:
        return -1
    if nlen == 3 and mv[pos : pos + 3].tobytes() == b"ima":
        if end - pos < nlen + 24:
            return -1
        (n,) = _U32.unpack_from(mv, pos + nlen + 20)
        pos += nlen + 24
    else:
        (n,) = _U32.unpack_from(mv, pos + nlen)
        pos += nlen + 4
        if n > MAX_TEMPLATE_DATA:
            return -1
    return pos + n if end - pos >= n else -1


def binary_split(data: bytes | memoryview, target: int, size: int) -> int:
    """The first record boundary at or after byte ``target`` (walking from the start), or
    the list's length when a record the reader would refuse comes first."""
    mv = memoryview(data)
    pos = 0
    while pos < target:
        pos = _next_binary(mv, pos, size)
        if pos < 0:
            return len(mv)
    return pos


def scan_binary(
    data: bytes | memoryview,
    start: int,
    stop: int,
    digest_bank: str,
    banks: Sequence[str],
) -> Scan:
    """Scan the records from byte ``start`` (a record boundary) to the first boundary at
    or after ``stop``."""
    mv = memoryview(data)
    end = len(mv)
    size = hashlib.new(digest_bank).digest_size
    zero = b"\0" * size
    unpack = _U32.unpack_from
    scan = Scan()
    tds: list[bytes] = []
    stored: list[bytes] = []
    add_pcr, add_td, add_stored = scan.pcrs.append, tds.append, stored.append
    viols = scan.violations
    index = 0
    pos = start
    while pos < stop and pos < end:
        # The common record inline: a template other than "ima", every length in range.
        if end - pos >= 8 + size:
            (pcr,) = unpack(mv, pos)
            p = pos + 4 + size
            (nlen,) = unpack(mv, p)
            p += 4
            if pcr < MAX_PCR and 0 < nlen <= MAX_TEMPLATE_NAME and end - p >= nlen + 4:
                tname = mv[p : p + nlen].tobytes()
                if tname != b"ima" and tname.isascii():
                    p += nlen
                    (n,) = unpack(mv, p)
                    p += 4
                    if n <= MAX_TEMPLATE_DATA and end - p >= n:
                        digest = mv[pos + 4 : pos + 4 + size].tobytes()
                        add_pcr(pcr)
                        add_td(mv[p : p + n].tobytes())
                        add_stored(digest)
                        if digest == zero:
                            viols.append(index)
                        index += 1
                        pos = p + n
                        continue
        try:
            rec = _one_binary(mv, pos, digest_bank, index)
        except FormatError as e:
            scan.error = (str(e), index)
            break
        add_pcr(rec.pcr)
        add_td(rec.template_data)
        add_stored(rec.digest)
        if rec.digest == zero:
            viols.append(index)
        index += 1
        pos = _next_binary(mv, pos, size)
    scan.count = index
    _hash_all(scan, tds, stored, digest_bank, banks)
    return scan


# -- the PCR chains ---------------------------------------------------------------------


def chain(
    bank: str, pcrs: bytes, values: bytes, watch: Mapping[int, bytes]
) -> tuple[list[bytes], dict[int, list[int]]]:
    """Replay one bank: extend PCR ``pcrs[i]`` with the i-th digest of ``values``.

    Returns the 24 PCR values after the last record and, for each PCR in ``watch``, the
    counts of records after which that PCR equalled its watched value (see
    :func:`combine_matches`).
    """
    native = _native()
    if native is not None:
        regs_c, hits_c = native.chain(bank, bytes(pcrs), values, dict(watch))
        return regs_c, hits_c
    ctor = getattr(hashlib, bank)
    size = ctor().digest_size
    regs = [b"\0" * size] * NUM_PCRS
    hits: dict[int, list[int]] = {p: [] for p in watch}
    n = len(pcrs)
    digests = [values[i : i + size] for i in range(0, n * size, size)]
    if n and pcrs.count(pcrs[0]) == n:
        # One PCR for the whole log (PCR 10, IMA's): a single chain.
        p = pcrs[0]
        c = regs[p]
        want = watch.get(p)
        if want is None:
            for h in digests:
                c = ctor(c + h).digest()
        else:
            hit = hits[p]
            for count, h in enumerate(digests, 1):
                c = ctor(c + h).digest()
                if c == want:
                    hit.append(count)
        regs[p] = c
        return regs, hits
    for count, (p, h) in enumerate(zip(pcrs, digests, strict=True), 1):
        c = regs[p] = ctor(regs[p] + h).digest()
        if p in watch and c == watch[p]:
            hits[p].append(count)
    return regs, hits


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def combine_matches(
    pcrs: bytes, slots: Sequence[tuple[int, bool, Sequence[int]]]
) -> tuple[bool, int | None]:
    """``(matches, matched_at)`` of :class:`~imaguard.measure._replay.Replay` from each
    expected value's own matches.

    ``slots``: per expected (bank, PCR) value: the PCR, whether the value equals the PCR's
    power-on zeros, and the counts of records after which the bank's PCR equalled it. A
    value holds from such a count until the next record that extends its PCR; the replay
    matches after a record when every value holds, and ``matched_at`` is the last record
    extending an expected PCR after which the replay matched (0 when it matched before
    the first record and at no such record since; None when never).
    """
    n = len(pcrs)
    common: list[tuple[int, int]] | None = None
    for p, initial, hits in slots:
        pb = bytes((p,))
        spans = []
        if initial:
            nxt = pcrs.find(pb)
            spans.append((0, n if nxt < 0 else nxt))
        for m in hits:
            nxt = pcrs.find(pb, m)
            spans.append((m, n if nxt < 0 else nxt))
        common = spans if common is None else _intersect(common, spans)
    if not common:
        return False, None
    watched = [bytes((p,)) for p in {s[0] for s in slots}]
    matched_at: int | None = None
    for lo, hi in reversed(common):
        last = max(pcrs.rfind(pb, max(lo, 1) - 1, hi) for pb in watched)
        if last >= 0:
            matched_at = last + 1
            break
        if lo == 0:
            matched_at = 0
    return common[-1][1] == n, matched_at


# -- the two processes ------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes:
    parts = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise _ChildFailedError("the other process closed its pipe")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _send(fd: int, obj: Any) -> None:
    data = marshal.dumps(obj)
    try:
        _write_all(fd, struct.pack("<Q", len(data)) + data)
    except OSError as e:  # the other process is gone (EPIPE)
        raise _ChildFailedError(f"cannot send: {e}") from None


def _recv(fd: int) -> Any:
    (n,) = struct.unpack("<Q", _read_exact(fd, 8))
    try:
        # Our own forked child's message (marshal: no code, unlike pickle).
        return marshal.loads(_read_exact(fd, n))  # noqa: S302
    except (EOFError, ValueError, TypeError) as e:
        raise _ChildFailedError(f"unreadable message: {e}") from None


class _Parallel:
    """One verification on two processes (the module doc)."""

    def __init__(
        self,
        data: bytes,
        kind: str,
        digest_bank: str,
        banks: Sequence[str],
        expected: Mapping[str, Mapping[int, bytes]] | None,
        prefix_ok: bool,
        keyring: Keyring | None,
        runtime_policy: PolicyArg,
        ignore_violations: bool,
        digest_lists: Sequence[tuple[bytes, DigestList]],
    ) -> None:
        self.data = data
        self.kind = kind
        self.digest_bank = digest_bank
        exp = {b: dict(v) for b, v in (expected or {}).items()}
        self.expected = expected
        self.exp = exp
        # As Replay: the banks given, then any other bank an expected value names.
        self.banks: tuple[str, ...] = tuple(dict.fromkeys((*banks, *exp)))
        self.sizes = [hashlib.new(b).digest_size for b in self.banks]
        self.prefix_ok = prefix_ok
        self.keyring = keyring
        self.policy_arg = runtime_policy
        self.ignore_violations = ignore_violations
        self.digest_lists = digest_lists
        # Banks replayed by the parent (even positions) and by the child (odd).
        self.native = self.kind == "ascii" and _native() is not None
        if self.native and (keyring is not None or runtime_policy is not None):
            # Judging (Python and C) outweighs the C scan: the child replays every bank.
            self.mine: list[int] = []
            self.theirs = list(range(len(self.banks)))
        else:
            self.mine = list(range(0, len(self.banks), 2))
            self.theirs = list(range(1, len(self.banks), 2))

    # The split: the child scans [0, split), the parent [split, end).
    def _split(self) -> int:
        n = len(self.data)
        judging = self.keyring is not None or self.policy_arg is not None
        parent_work = 0.0
        judge_cost, policy_cost = (
            (_JUDGE_COST_C, _POLICY_COST_C) if self.native else (_JUDGE_COST, _POLICY_COST)
        )
        if judging:
            parent_work += judge_cost * n
        if isinstance(self.policy_arg, bytes | str):
            parent_work += policy_cost * len(self.policy_arg)
        # Equal work: child = f * n, parent = parent_work + (1 - f) * n.
        f = min(1.0, (parent_work + n) / (2 * n))
        target = int(f * n)
        if target >= n:
            return n
        if self.kind == "ascii":
            nl = self.data.find(b"\n", target)
            return n if nl < 0 else nl + 1
        return target  # the child stops at the first record boundary from here

    def _capacity(self, nbytes: int) -> int:
        """At most this many records fit in ``nbytes`` of the list."""
        size = hashlib.new(self.digest_bank).digest_size
        if self.kind == "ascii":
            # A record's line holds at least "P HEX T F": 2 * size + 4 characters.
            return nbytes // (2 * size + 4) + 1
        return nbytes // (13 + size) + 1  # u32, digest, u32, a name byte, u32

    def run(self) -> VerifyResult:
        data = self.data
        n = len(data)
        split = self._split()
        cap_c = self._capacity(split if self.kind == "ascii" else n)
        cap_p = self._capacity(n - split) if split < n else 0
        row = 1 + sum(self.sizes)
        self.caps = (cap_c, cap_p)
        mm = mmap.mmap(-1, max(1, (cap_c + cap_p) * row))
        self.mm = mm
        c2p_r, c2p_w = os.pipe()
        p2c_r, p2c_w = os.pipe()
        gc_was = gc.isenabled()
        gc.disable()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its parts are tested in-process
            code = 1
            try:
                os.close(c2p_r)
                os.close(p2c_w)
                self._child(split, c2p_w, p2c_r)
                code = 0
            finally:
                os._exit(code)
        os.close(c2p_w)
        os.close(p2c_r)
        done = False
        try:
            result = self._parent(split, c2p_r, p2c_w)
            done = True
            return result
        finally:
            os.close(c2p_r)
            os.close(p2c_w)
            if not done:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            mm.close()
            if gc_was:
                gc.enable()

    # Where a range's columns live in the shared mapping: (region 0 child, 1 parent).
    def _offsets(self, region: int) -> tuple[int, list[int]]:
        cap_c, cap_p = self.caps
        base = 0 if region == 0 else cap_c * (1 + sum(self.sizes))
        cap = cap_c if region == 0 else cap_p
        offs = []
        pos = base + cap
        for s in self.sizes:
            offs.append(pos)
            pos += cap * s
        return base, offs

    def _store(self, region: int, scan: Scan) -> None:
        base, offs = self._offsets(region)
        mm = self.mm
        mm[base : base + scan.count] = bytes(scan.pcrs[: scan.count])
        for off, values in zip(offs, scan.values, strict=True):
            mm[off : off + len(values)] = values

    def _column(self, region: int, count: int, bank: int) -> bytes:
        _, offs = self._offsets(region)
        size = self.sizes[bank]
        return self.mm[offs[bank] : offs[bank] + count * size]

    def _pcr_column(self, region: int, count: int) -> bytes:
        base, _ = self._offsets(region)
        return self.mm[base : base + count]

    def _scan(self, start: int, stop: int) -> Scan:
        if self.kind == "ascii":
            first_line = self.data.count(b"\n", 0, start) + 1
            return scan_ascii(self.data, start, stop, first_line, self.digest_bank, self.banks)
        return scan_binary(self.data, start, stop, self.digest_bank, self.banks)

    def _replay(
        self, which: list[int], counts: tuple[int, int]
    ) -> dict[str, tuple[list[bytes], dict[int, list[int]]]]:
        pcrs = self._pcr_column(0, counts[0]) + self._pcr_column(1, counts[1])
        out = {}
        for i in which:
            b = self.banks[i]
            values = self._column(0, counts[0], i) + self._column(1, counts[1], i)
            out[b] = chain(b, pcrs, values, self.exp.get(b, {}))
        return out

    def _child(self, split: int, out: int, inp: int) -> None:  # pragma: no cover - forked
        scan = self._scan(0, split)
        self._store(0, scan)
        _send(out, (scan.count, scan.failures, scan.violations, scan.error))
        (count_p,) = _recv(inp)
        counts = (scan.count, 0 if scan.error is not None else count_p)
        _send(out, self._replay(self.theirs, counts))

    def _parent(self, split: int, inp: int, out: int) -> VerifyResult:
        n = len(self.data)
        mine: Scan | None = None
        if split < n:
            start = split
            if self.kind == "binary":
                size = hashlib.new(self.digest_bank).digest_size
                start = binary_split(self.data, split, size)
            if start < n:
                mine = self._scan(start, n)
                self._store(1, mine)
        _send(out, (mine.count if mine is not None else 0,))
        policy = _policy(self.policy_arg)
        records_findings: list[Finding] = []
        judge = _Judge(records_findings, self.keyring, policy, self.digest_lists)
        head = list(records_findings)  # the policy's own problems come first
        records_findings.clear()
        if self.kind == "ascii":
            _judge_ascii(self.data, self.digest_bank, judge)
        else:
            _judge_binary(self.data, self.digest_bank, judge)
        count_c, failures, violations, error = _recv(inp)
        count = count_c
        if error is None and mine is not None:
            failures = failures + [count_c + i for i in mine.failures]
            violations = violations + [count_c + i for i in mine.violations]
            count += mine.count
            if mine.error is not None:
                # A binary record's error names its index, counted here from the range's
                # first record: renumber it in the whole list.
                msg, rel = mine.error
                if self.kind == "binary":
                    msg = msg.replace(f"record {rel} at", f"record {count_c + rel} at", 1)
                error = (msg, count_c + rel)
        counts = (count_c, count - count_c)
        chains = self._replay(self.mine, counts)
        chains.update(_recv(inp))
        tagged = [(i, 0, Finding("template-hash", _TEMPLATE_HASH, i)) for i in failures]
        if not self.ignore_violations:
            tagged += [(i, 1, Finding("violation", _VIOLATION, i)) for i in violations]
        tagged += [(f.index or 0, 2, f) for f in records_findings if (f.index or 0) < count]
        tagged.sort(key=lambda t: (t[0], t[1]))
        findings = head + [t[2] for t in tagged]
        pcrs_seq = self._pcr_column(0, counts[0]) + self._pcr_column(1, counts[1])
        slots = []
        for b, vals in self.exp.items():
            regs, hits = chains[b]
            for p, want in vals.items():
                slots.append((p, want == b"\0" * len(regs[p]), hits[p]))
        matches, matched_at = combine_matches(pcrs_seq, slots)
        parse_error = Finding("parse", error[0], error[1]) if error is not None else None
        return conclude(
            findings,
            parse_error,
            count,
            self.banks,
            {b: chains[b][0] for b in self.banks},
            expecting=bool(slots),
            matches=matches,
            matched_at=matched_at,
            expected=self.expected,
            prefix_ok=self.prefix_ok,
        )


# -- judging in the parent --------------------------------------------------------------


def _judge_ascii(text: bytes, bank: str, judge: _Judge) -> None:
    """Judge every record of an ASCII list, in order (records after a parse error are
    judged too, as far as they read; the caller drops their findings)."""
    size = hashlib.new(bank).digest_size
    hexsize = 2 * size
    zhex = "0" * hexsize
    zero = b"\0" * size
    digests = judge.fast_digests if judge.active and not judge.digest_lists else None
    record: Callable[[RawRecord, bool, bool], None] = judge.record
    native = _native()
    if native is not None and type(digests) is dict:
        # The C loop passes what the loop below passes and hands back the other lines.
        for offset, num, idx in native.judge_ima_ng(text, hexsize, digests):
            nl = text.find(b"\n", offset)
            try:
                rec = _one_ascii(text[offset : len(text) if nl < 0 else nl], bank, num, idx)
            except FormatError:
                return
            record(rec, rec.digest == zero, idx == 0)
        return
    index = 0
    for number, line in enumerate(text.decode("utf-8", "surrogateescape").split("\n"), 1):
        if not line:
            continue
        if digests is not None and index:
            # A well-formed ima-ng line the policy allows has nothing to report.
            parts = line.split(" ")
            if (
                len(parts) == 5
                and parts[2] == "ima-ng"
                and len(parts[1]) == hexsize
                and parts[0] in _PCR_TEXT
            ):
                if parts[1] == zhex:
                    index += 1  # a violation: not judged
                    continue
                dng = parts[3]
                hexd = dng[dng.find(":") + 1 :]
                allowed = digests.get(parts[4])
                if allowed is not None and hexd in allowed and hexd.islower():
                    index += 1
                    continue
        elif not judge.active and index:
            return
        try:
            rec = _one_ascii(line.encode("utf-8", "surrogateescape"), bank, number, index)
        except FormatError:
            return
        record(rec, rec.digest == zero, index == 0)
        index += 1


def _judge_binary(data: bytes, bank: str, judge: _Judge) -> None:
    zero = b"\0" * hashlib.new(bank).digest_size
    try:
        for rec in iter_binary(data, bank):
            judge.record(rec, rec.digest == zero, rec.index == 0)
            if not judge.active:
                return
    except FormatError:
        return
