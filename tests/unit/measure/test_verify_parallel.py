"""verify_log: the two-process verification gives exactly verify_records' result.

Every test compares the forked path (``parallel=True``) with the one-process path on the
same log: the findings (codes, messages, indexes, order), the PCR values, matched_at and
the notes. The logs mix what the fast loops handle (ima-ng) with what they hand to the
format module's reader (ima-sig, ima-buf, the ima template, PCR 9 lines with a leading
space, violations), and malformed records in the child's range and in the parent's.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading

import pytest

from imaguard.errors import FormatError
from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.measurelist import serialize_ascii, serialize_binary
from imaguard.formats.template import TemplateDescriptor, TemplateEntry
from imaguard.measure import (
    _parallel,
    buffer_entry,
    policy_from_records,
    records_from_ascii,
    records_from_binary,
    verify_log,
    verify_records,
    violation_entry,
)
from imaguard.measure._parallel import (
    binary_split,
    chain,
    combine_matches,
    scan_ascii,
    scan_binary,
)
from imaguard.measure._pcr import boot_aggregate_entry
from imaguard.measure._replay import Replay

NG = TemplateDescriptor.lookup("ima-ng")
SIG = TemplateDescriptor.lookup("ima-sig")
IMA = TemplateDescriptor.lookup("ima")


def ng(path: str, content: bytes, pcr: int = 10, algo: str = "sha256") -> TemplateEntry:
    digest = hashlib.new(algo, content).digest()
    return TemplateEntry(pcr, NG, (algo.encode() + b":\0" + digest, path.encode() + b"\0"))


def mixed_log(n: int, seed: int = 7, pcrs: tuple[int, ...] = (10,)) -> list[TemplateEntry]:
    rng = random.Random(seed)
    out = [boot_aggregate_entry(NG, None)]
    for i in range(n):
        r = rng.random()
        pcr = rng.choice(pcrs)
        if r < 0.75:
            out.append(ng(f"/usr/lib/f{i}.so", rng.randbytes(8), pcr))
        elif r < 0.8:
            algo = rng.choice(("sha1", "sha512"))
            out.append(ng(f"/usr/lib/g{i}.so", rng.randbytes(8), pcr, algo))
        elif r < 0.85:
            out.append(violation_entry(f"/tmp/v{i}", NG, pcr=pcr))
        elif r < 0.9:
            d = b"sha256:\0" + hashlib.sha256(b"%d" % i).digest()
            out.append(TemplateEntry(pcr, SIG, (d, b"/bin/s%d\0" % i, b"")))
        elif r < 0.95:
            out.append(buffer_entry(f"buf-{i}", rng.randbytes(12), pcr=pcr))
        else:
            out.append(TemplateEntry(pcr, IMA, (rng.randbytes(20), b"/old/%d\0" % i)))
    return out


def same(data: bytes, **kw: object) -> None:
    """verify_log forked and in one process agree, and both equal verify_records."""
    forked = verify_log(data, parallel=True, **kw)  # type: ignore[arg-type]
    single = verify_log(data, parallel=False, **kw)  # type: ignore[arg-type]
    assert forked.to_json() == single.to_json()
    assert forked.findings == single.findings


def replay_values(entries: list[TemplateEntry], upto: int) -> dict[str, dict[int, bytes]]:
    """The PCR values after the first ``upto`` records."""
    recs, _ = records_from_binary(serialize_binary(entries[:upto]))
    rep = Replay(("sha1", "sha256"))
    for r in recs:
        rep.step(r)
    used = rep.used()
    return {b: {i: rep.pcrs[b][i] for i in used} for b in ("sha1", "sha256")}


@pytest.mark.parametrize("fmt", ["ascii", "binary"])
def test_clean_log_with_policy_text(fmt: str) -> None:
    entries = mixed_log(3000)
    data = serialize_ascii(entries) if fmt == "ascii" else serialize_binary(entries)
    recs, _ = records_from_binary(serialize_binary(entries))
    policy = policy_from_records(recs)
    expected = replay_values(entries, len(entries))
    result = verify_log(data, parallel=True, runtime_policy=policy.serialize(), expected=expected)
    assert result.entries == len(entries)
    assert result.matched_at == len(entries)
    # The violations are reported, and nothing else.
    assert {f.code for f in result.findings} == {"violation"}
    same(data, runtime_policy=policy.serialize(), expected=expected)
    same(data, runtime_policy=policy, expected=expected, ignore_violations=True)


@pytest.mark.parametrize("fmt", ["ascii", "binary"])
def test_findings_everywhere(fmt: str) -> None:
    """Tampered digests, missing and changed policy entries, excludes, a first record
    that is not boot_aggregate: in both processes' ranges."""
    entries = mixed_log(2000, seed=11)
    entries[0] = ng("/not/boot", b"x")
    data = bytearray(serialize_ascii(entries) if fmt == "ascii" else serialize_binary(entries))
    recs, _ = records_from_binary(serialize_binary(entries))
    policy = policy_from_records(recs[: len(recs) // 2], excludes=(r"/usr/lib/f1\d\.so",))
    digests = dict(policy.digests)
    for k in list(digests)[::7]:
        digests[k] = ("ab" * 32,)
    policy = RuntimePolicy(digests=digests, excludes=policy.excludes)
    if fmt == "ascii":
        lines = bytes(data).split(b"\n")
        for i in (5, 900, 1500, 1999):
            parts = lines[i].split(b" ")
            parts[1] = (b"f" if parts[1][:1] != b"f" else b"e") + parts[1][1:]
            lines[i] = b" ".join(parts)
        lines[700] = lines[700].upper().replace(b"IMA-NG", b"ima-ng")
        data = bytearray(b"\n".join(lines))
    else:
        offs = [r.offset for r in recs]
        for i in (5, 900, 1500, 1999):
            data[offs[i] + 4] ^= 1
    expected = replay_values(entries, 1200)
    for kw in (
        {"runtime_policy": policy, "expected": expected},
        {"runtime_policy": policy.serialize().encode(), "expected": expected, "prefix_ok": True},
        {"expected": replay_values(entries, len(entries))},
        {"expected": {"sha256": {10: b"\1" * 32}}},
        {},
    ):
        same(bytes(data), **kw)
    result = verify_log(bytes(data), parallel=True, runtime_policy=policy, expected=expected)
    codes = {f.code for f in result.findings}
    assert {"template-hash", "not-in-policy", "boot-aggregate", "digest-not-allowed"} <= codes


def test_pcrs_matching_midway_on_several_pcrs() -> None:
    entries = mixed_log(1500, seed=3, pcrs=(9, 10, 11))
    data = serialize_ascii(entries)
    for upto in (0, 1, 2, 700, 1499, len(entries)):
        exp = replay_values(entries, upto)
        same(data, expected=exp)
        same(data, expected=exp, prefix_ok=True)
    # A value only one bank names, and the power-on zeros of an untouched PCR.
    same(data, expected={"sha384": {10: b"\0" * 48}, "sha1": {3: b"\0" * 20}})
    same(data, expected={"sha1": {3: b"\0" * 20}}, banks=("sha256",))


@pytest.mark.parametrize("where", [0.1, 0.5, 0.97])
def test_malformed_ascii_in_either_range(where: float) -> None:
    entries = mixed_log(2000, seed=5)
    lines = serialize_ascii(entries).split(b"\n")
    at = int(where * len(lines))
    policy = policy_from_records(records_from_binary(serialize_binary(entries))[0])
    for bad in (b"10 zz ima-ng sha256:00 /x", b"10 " + b"0" * 40 + b" ima-ng nocolon /x", b"x"):
        broken = b"\n".join([*lines[:at], bad, *lines[at:]])
        same(broken, expected=replay_values(entries, 10))
        same(broken, runtime_policy=policy)
        result = verify_log(broken, parallel=True)
        assert result.findings[-1].code == "parse"
        assert f"line {at + 1}" in result.findings[-1].message
        assert result.entries == at
    # Blank lines and a digest column of sha256 width.
    sha256_col = serialize_ascii(entries, "sha256").replace(b"\n", b"\n\n", 50)
    same(sha256_col)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.97])
def test_malformed_binary_in_either_range(where: float) -> None:
    entries = mixed_log(2000, seed=9)
    data = serialize_binary(entries)
    recs, _ = records_from_binary(data)
    off = recs[int(where * len(recs))].offset
    for patch in (b"\x30\0\0\0", b"\x0a\0\0\0" + b"\0" * 20 + b"\0\0\0\0"):
        broken = data[:off] + patch + data[off + len(patch) :]
        same(broken)
        same(broken, runtime_policy=policy_from_records(recs))
    same(data[: off + 7])  # cut inside a record


def test_scans_and_chain_in_process() -> None:
    """The child's parts, run here: they agree with the reader and Replay."""
    entries = mixed_log(500, seed=13, pcrs=(10, 11))
    text = serialize_ascii(entries)
    binary = serialize_binary(entries)
    recs, _, _ = records_from_ascii(text)
    rep = Replay(("sha1", "sha256"))
    oks = [rep.step(r) for r in recs]
    for scan in (
        scan_ascii(text, 0, len(text), 1, "sha1", ("sha1", "sha256")),
        scan_binary(binary, 0, len(binary), "sha1", ("sha1", "sha256")),
        scan_binary(binary, 0, len(binary), "sha1", ("sha256",)),
    ):
        assert scan.count == len(recs)
        assert scan.error is None
        assert scan.failures == [i for i, ok in enumerate(oks) if not ok] == []
        assert scan.violations == [i for i, r in enumerate(recs) if not any(r.digest)]
        assert bytes(scan.pcrs) == bytes(r.pcr for r in recs)
    scan = scan_ascii(text, 0, len(text), 1, "sha1", ("sha1", "sha256"))
    for b, values in zip(("sha1", "sha256"), scan.values, strict=True):
        regs, hits = chain(b, bytes(scan.pcrs), bytes(values), {11: rep.pcrs[b][11]})
        assert regs == rep.pcrs[b]
        assert hits[11][-1] == max(i + 1 for i, r in enumerate(recs) if r.pcr == 11)
    # A split point lands on a record boundary; past a bad record it is the end.
    cut = binary_split(binary, len(binary) // 2, 20)
    assert cut in {r.offset for r in records_from_binary(binary)[0]}
    assert binary_split(binary[:-3], len(binary) - 10, 20) == len(binary) - 3


def test_combine_matches_edges() -> None:
    assert combine_matches(b"\x0a\x0a", []) == (False, None)
    # Matching at the start only (zeros expected for PCR 10, which record 1 extends).
    assert combine_matches(b"\x0a\x0a", [(10, True, [])]) == (False, 0)
    # Two values of one PCR that never hold together.
    assert combine_matches(b"\x0a\x0a", [(10, False, [1]), (10, False, [2])]) == (False, None)
    # A PCR never extended after its match: holds to the end.
    assert combine_matches(b"\x0a\x0b\x0b", [(10, False, [1])]) == (True, 1)


def test_policy_text_errors_and_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = mixed_log(300)
    data = serialize_ascii(entries)
    with pytest.raises(FormatError, match="runtime policy"):
        verify_log(data, parallel=True, runtime_policy=b"{not json")
    with pytest.raises(FormatError, match="runtime policy"):
        verify_log(data, parallel=False, runtime_policy="[]")

    # A child that fails: the parent verifies in one process and says so.
    def broken(self: object, split: int, out: int, inp: int) -> None:
        raise RuntimeError("child broke")

    monkeypatch.setattr(_parallel._Parallel, "_child", broken)
    result = verify_log(data, parallel=True)
    assert result.to_json() == verify_log(data, parallel=False).to_json()


def test_when_it_forks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _parallel._use_fork(1 << 30, False)
    assert _parallel._use_fork(10, True)
    assert not _parallel._use_fork(10, None)  # small
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not _parallel._use_fork(1 << 30, None)  # one CPU
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert _parallel._use_fork(1 << 30, None)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        assert not _parallel._use_fork(1 << 30, True)  # fork is unsafe with threads
    finally:
        stop.set()
        t.join()


def test_verify_records_unchanged_by_the_split() -> None:
    """The one-process path is verify_records itself."""
    entries = mixed_log(200)
    data = serialize_binary(entries)
    recs, problem = records_from_binary(data)
    direct = verify_records(recs, parse_error=problem)
    assert verify_log(data, parallel=False).to_json() == direct.to_json()
