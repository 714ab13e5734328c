"""The C loops of log verification (imaguard._native) give what the Python loops give.

The scan of ASCII lines, the judging of ima-ng lines against a policy's digests and the
PCR chains are each compared with their Python versions on the same input, including
logs damaged at random: the C loops must take exactly the lines the Python loops take and
hand every other one back, so that the findings, their order and the PCR values agree.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import oracle_missing
from imaguard.formats.measurelist import serialize_ascii, serialize_binary
from imaguard.measure import _parallel, policy_from_records, records_from_binary, verify_log
from imaguard.measure._parallel import _scan_ascii_py, chain, scan_ascii
from imaguard.measure._verify import Finding, _Judge

from .test_verify_parallel import mixed_log, ng, replay_values


@pytest.fixture(autouse=True)
def _built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGUARD_NATIVE", raising=False)
    if _parallel._native() is None:
        oracle_missing("imaguard._native is not built (needs gcc and libssl-dev: make deps)")


BASE_ENTRIES = mixed_log(400, seed=5, pcrs=(10, 11))
BASE = serialize_ascii(BASE_ENTRIES)
BASE_POLICY = policy_from_records(records_from_binary(serialize_binary(BASE_ENTRIES))[0])

# Damage that a line-by-line reader meets in the wild, and edge cases of each field.
EDITS = [
    (b" ima-ng ", b" ima-ng  "),  # a doubled space
    (b"sha256:", b"SHA256:"),
    (b"sha256:", b"sha256"),  # no colon
    (b"10 ", b"010 "),  # a leading zero in the PCR column
    (b"10 ", b"24 "),  # a PCR out of range
    (b"10 ", b"23 "),
    (b".so", b".\xff\xfeso"),  # a name that is not UTF-8
    (b".so", b".\xc3\xa9so"),  # a name that is
    (b"a", b"A"),  # uppercase hex somewhere
    (b"\n", b"\n\n"),  # an empty line
    (b"\n", b""),  # two lines run together
    (b"e", b"g"),  # not hex
    (b"0", b"00"),  # an odd length
]


def _damage(data: bytes, rng: random.Random, edits: int) -> bytes:
    lines = data.split(b"\n")
    for _ in range(edits):
        i = rng.randrange(len(lines))
        old, new = rng.choice(EDITS)
        line = lines[i] + b"\n"
        at = line.find(old, rng.randrange(max(1, len(line))))
        if at < 0:
            at = line.find(old)
        if at >= 0:
            line = line[:at] + new + line[at + len(old) :]
        lines[i] = line[:-1] if line.endswith(b"\n") else line
    return b"\n".join(lines)


def _scans_agree(text: bytes, start: int, end: int, first: int, bank: str) -> None:
    banks = ("sha1", "sha256")
    fast = scan_ascii(text, start, end, first, bank, banks)
    slow = _scan_ascii_py(text, start, end, first, bank, banks)
    assert fast.count == slow.count
    assert bytes(fast.pcrs) == bytes(slow.pcrs)
    assert [bytes(v) for v in fast.values] == [bytes(v) for v in slow.values]
    assert fast.failures == slow.failures
    assert fast.violations == slow.violations
    assert fast.error == slow.error


def _judged(text: bytes, native: bool, monkeypatch: pytest.MonkeyPatch) -> list[Finding]:
    monkeypatch.setenv("IMAGUARD_NATIVE", "1" if native else "0")
    findings: list[Finding] = []
    judge = _Judge(findings, None, BASE_POLICY, ())
    _parallel._judge_ascii(text, "sha1", judge)
    return findings


def test_a_clean_log_and_its_parts() -> None:
    _scans_agree(BASE, 0, len(BASE), 1, "sha1")
    mid = BASE.index(b"\n", len(BASE) // 2) + 1
    _scans_agree(BASE, mid, len(BASE), BASE.count(b"\n", 0, mid) + 1, "sha1")
    _scans_agree(BASE, 0, mid, 1, "sha256")  # the check against another bank than sha1
    _scans_agree(BASE.rstrip(b"\n"), 0, len(BASE) - 1, 1, "sha1")  # no final newline
    _scans_agree(b"", 0, 0, 1, "sha1")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), edits=st.integers(1, 6))
def test_damaged_logs_scan_the_same(seed: int, edits: int) -> None:
    text = _damage(BASE, random.Random(seed), edits)
    _scans_agree(text, 0, len(text), 1, "sha1")


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**32 - 1), edits=st.integers(0, 6))
def test_damaged_logs_judge_the_same(
    monkeypatch: pytest.MonkeyPatch, seed: int, edits: int
) -> None:
    text = _damage(BASE, random.Random(seed), edits)
    fast = _judged(text, True, monkeypatch)
    slow = _judged(text, False, monkeypatch)
    if fast != slow:
        # The Python loop judges past a line the reader refuses (those findings are
        # dropped with the parse error); the C loop stops there. Up to it they agree.
        first_bad = min(f.index or 0 for f in fast + slow if f not in fast or f not in slow)
        parse = _scan_ascii_py(text, 0, len(text), 1, "sha1", ("sha1",))
        assert parse.error is not None
        assert first_bad >= parse.error[1]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), edits=st.integers(0, 4))
def test_damaged_logs_verify_the_same_forked_and_in_one_process(seed: int, edits: int) -> None:
    text = _damage(BASE, random.Random(seed), edits)
    expected = replay_values(BASE_ENTRIES, len(BASE_ENTRIES))
    kw = {"runtime_policy": BASE_POLICY.serialize(), "expected": expected}
    forked = verify_log(text, parallel=True, **kw)  # type: ignore[arg-type]
    single = verify_log(text, parallel=False, **kw)  # type: ignore[arg-type]
    assert forked.to_json() == single.to_json()


def test_judging_names_what_the_policy_does_not_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = serialize_ascii([ng("/usr/lib/unknown.so", b"u"), ng("/usr/lib/f3.so", b"other")])
    text = BASE + extra
    fast = _judged(text, True, monkeypatch)
    assert fast == _judged(text, False, monkeypatch)
    assert len(fast) >= 2
    assert (fast[-2].index, fast[-1].index) == (len(BASE_ENTRIES), len(BASE_ENTRIES) + 1)


@pytest.mark.parametrize("bank", ["sha1", "sha256", "sha384", "sha512"])
def test_chains(bank: str) -> None:
    rng = random.Random(bank)
    size = hashlib.new(bank).digest_size
    n = 500
    pcrs = bytes(rng.choice((10, 10, 11, 0, 23)) for _ in range(n))
    values = rng.randbytes(n * size)
    midway, _ = _python_chain(bank, pcrs[:250], values, {})
    watch = {10: midway[10], 11: b"\0" * size, 5: b"short"}
    fast = chain(bank, pcrs, values, watch)
    assert fast == _python_chain(bank, pcrs, values, watch)
    # The watched value was met at the last record up to 250 that extended PCR 10.
    assert fast[1][10] == [pcrs.rindex(10, 0, 250) + 1]


def _python_chain(
    bank: str, pcrs: bytes, values: bytes, watch: dict[int, bytes]
) -> tuple[list[bytes], dict[int, list[int]]]:
    size = hashlib.new(bank).digest_size
    regs = [b"\0" * size] * 24
    hits: dict[int, list[int]] = {p: [] for p in watch}
    for i, p in enumerate(pcrs):
        regs[p] = hashlib.new(bank, regs[p] + values[i * size : (i + 1) * size]).digest()
        if p in watch and regs[p] == watch[p]:
            hits[p].append(i + 1)
    return regs, hits


def test_bad_arguments_are_refused() -> None:
    native = _parallel._native()
    with pytest.raises(ValueError, match="out of bounds"):
        native.scan_ima_ng(b"x", 0, 5, "sha1", ("sha1",))
    with pytest.raises(ValueError, match="banks"):
        native.scan_ima_ng(b"x", 0, 1, "sha1", ())
    with pytest.raises(ValueError, match="unknown digest"):
        native.scan_ima_ng(b"x", 0, 1, "sha1", ("no-such-hash",))
    with pytest.raises(TypeError, match="str"):
        native.scan_ima_ng(b"x", 0, 1, "sha1", (b"sha1",))
    with pytest.raises(ValueError, match="fewer values"):
        native.chain("sha1", b"\x0a\x0a", b"\0" * 20, {})
    with pytest.raises(ValueError, match="watch"):
        native.chain("sha1", b"\x0a", b"\0" * 20, {30: b"x"})
    with pytest.raises(IndexError, match="PCR 30"):
        native.chain("sha1", b"\x1e", b"\0" * 20, {})
    with pytest.raises(TypeError):
        native.judge_ima_ng(b"x", 40, [])
