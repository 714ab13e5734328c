"""Binary and ASCII measurement lists: round trips, truncation, bad lengths, fuzzing.

Spec kernel-ima.md §4.4 (binary layout) and §4.5 (ASCII layout). Every malformed,
truncated or oversized input must raise :class:`imaguard.FormatError`, never
IndexError / struct.error / UnicodeDecodeError / ValueError.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imaguard
from imaguard.formats.measurelist import (
    iter_binary,
    parse_ascii,
    parse_binary,
    serialize_ascii,
    serialize_binary,
)
from imaguard.formats.template import TEMPLATES, TemplateDescriptor, TemplateEntry
from imaguard.measure import records_from_ascii, records_from_binary, verify_records

BANKS = ("sha1", "sha256", "sha384", "sha512")
DIGEST_ALGOS = {"md5": 16, "sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
CUSTOM_FORMATS = ("d-ng|n-ng|iuid|igid|imode", "n-ng|d-ng|buf", "d-ngv2|n-ng|sig|xattrnames")


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def td_of(*fields: bytes) -> bytes:
    return b"".join(u32(len(f)) + f for f in fields)


# -- strategies -------------------------------------------------------------------------

# Names as the kernel stores them: no NUL, spaces already turned into '_', no newline
# (the ASCII list is line-based). Non-UTF-8 bytes are allowed and must survive.
_name_bytes = st.binary(min_size=1, max_size=300).map(
    lambda b: b.replace(b"\0", b"x").replace(b" ", b"_").replace(b"\n", b"/")
)


@st.composite
def _digest_ng(draw: st.DrawFn, v2: bool = False) -> bytes:
    algo = draw(st.sampled_from(sorted(DIGEST_ALGOS)))
    digest = draw(st.binary(min_size=DIGEST_ALGOS[algo], max_size=DIGEST_ALGOS[algo]))
    prefix = f"{algo}:"
    if v2:
        prefix = draw(st.sampled_from(["ima:", "verity:"])) + prefix
    return prefix.encode() + b"\0" + digest


def _field(field_id: str) -> st.SearchStrategy[bytes]:
    if field_id == "d":
        return st.binary(min_size=20, max_size=20)
    if field_id == "n":
        return _name_bytes.map(lambda b: b[:255] + b"\0")
    if field_id == "n-ng":
        return _name_bytes.map(lambda b: b + b"\0")
    if field_id == "d-ng":
        return _digest_ng()
    if field_id == "d-ngv2":
        return _digest_ng(v2=True)
    if field_id == "d-modsig":
        return st.one_of(st.just(b""), _digest_ng())
    if field_id == "xattrnames":
        return st.one_of(st.just(b""), _name_bytes.map(lambda b: b[:60] + b"\0"))
    if field_id in ("iuid", "igid"):
        return st.integers(0, 2**32 - 1).map(u32)
    if field_id == "imode":
        return st.integers(0, 0xFFFF).map(lambda m: struct.pack("<H", m))
    return st.binary(max_size=120)  # sig buf modsig evmsig xattrlengths xattrvalues


@st.composite
def entries(draw: st.DrawFn, template: str | None = None) -> TemplateEntry:
    name = template or draw(st.sampled_from([*TEMPLATES, *CUSTOM_FORMATS]))
    desc = TemplateDescriptor.lookup(name)
    fields = tuple(draw(_field(f)) for f in desc.fields)
    pcr = draw(st.sampled_from([10, 10, 10, 0, 5, 11, 23]))
    violation = draw(st.booleans()) and draw(st.booleans())
    return TemplateEntry(pcr, desc, fields, violation)


_lists = st.lists(entries(), min_size=0, max_size=8)


# -- round trips ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=_lists, bank=st.sampled_from(BANKS))
def test_binary_round_trip(items: list[TemplateEntry], bank: str) -> None:
    data = serialize_binary(items, bank)
    parsed = parse_binary(data, bank)
    assert [r.entry for r in parsed] == items
    assert [r.digest for r in parsed] == [e.template_digest(bank) for e in items]
    assert serialize_binary([r.entry for r in parsed], bank) == data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=_lists, bank=st.sampled_from(BANKS))
def test_ascii_round_trip(items: list[TemplateEntry], bank: str) -> None:
    text = serialize_ascii(items, bank)
    assert text.count(b"\n") == len(items)
    parsed = parse_ascii(text, bank)
    assert [r.entry for r in parsed] == items
    assert [r.digest for r in parsed] == [e.template_digest(bank) for e in items]
    assert serialize_ascii([r.entry for r in parsed], bank) == text


@pytest.mark.parametrize("template", [*TEMPLATES, *CUSTOM_FORMATS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_template_round_trips_both_ways(template: str, data: st.DataObject) -> None:
    items = data.draw(st.lists(entries(template), min_size=1, max_size=4))
    assert [r.entry for r in parse_binary(serialize_binary(items))] == items
    assert [r.entry for r in parse_ascii(serialize_ascii(items))] == items
    # ASCII and binary describe the same template data (what every digest hashes).
    bin_td = [r.template_data for r in iter_binary(serialize_binary(items))]
    assert bin_td == [e.template_data() for e in items]


@settings(max_examples=60, deadline=None)
@given(items=st.lists(entries(), min_size=1, max_size=6))
def test_ascii_and_binary_replay_to_the_same_pcrs(items: list[TemplateEntry]) -> None:
    recs_b, problem_b = records_from_binary(serialize_binary(items))
    recs_a, bank, problem_a = records_from_ascii(serialize_ascii(items))
    assert problem_b is None
    assert problem_a is None
    assert bank == "sha1"
    res_b = verify_records(recs_b, ignore_violations=True)
    res_a = verify_records(recs_a, ignore_violations=True)
    assert res_a.pcrs == res_b.pcrs
    assert not [f for f in res_b.findings if f.code == "template-hash"]


def test_non_utf8_names_round_trip_as_raw_bytes() -> None:
    desc = TemplateDescriptor.lookup("ima-ng")
    d = b"sha256:\0" + hashlib.sha256(b"x").digest()
    raw = b"/tmp/\xff\xfe\x80latin1-\xe9t\xe9"
    entry = TemplateEntry(10, desc, (d, raw + b"\0"))
    (from_bin,) = parse_binary(serialize_binary([entry]))
    (from_ascii,) = parse_ascii(serialize_ascii([entry]))
    assert from_bin.entry.name == raw
    assert from_ascii.entry.name == raw
    assert raw + b"\n" in serialize_ascii([entry])
    # A str with surrogate escapes is the same list.
    text = serialize_ascii([entry]).decode("utf-8", "surrogateescape")
    assert parse_ascii(text)[0].entry == entry


# -- truncation -------------------------------------------------------------------------


def _sample_list() -> tuple[list[TemplateEntry], list[int]]:
    """One entry of every template (and a custom one, and a violation), and the byte
    offsets where records end."""
    items = []
    for name in [*TEMPLATES, *CUSTOM_FORMATS]:
        desc = TemplateDescriptor.lookup(name)
        fields = []
        for f in desc.fields:
            if f == "d":
                fields.append(b"\x11" * 20)
            elif f in ("n", "n-ng"):
                fields.append(f"/bin/{name.replace('|', '_')}\0".encode())
            elif f in ("d-ng", "d-modsig"):
                fields.append(b"sha256:\0" + b"\x22" * 32)
            elif f == "d-ngv2":
                fields.append(b"ima:sha256:\0" + b"\x22" * 32)
            elif f in ("iuid", "igid"):
                fields.append(u32(7))
            elif f == "imode":
                fields.append(b"\xa4\x81")
            elif f == "xattrnames":
                fields.append(b"security.ima\0")
            else:
                fields.append(b"\x03\x02\x04" + b"\x33" * 10)
        items.append(TemplateEntry(10, desc, tuple(fields), name == "ima-sig"))
    ends = []
    total = 0
    for e in items:
        total += len(serialize_binary([e]))
        ends.append(total)
    return items, ends


@pytest.mark.parametrize("bank", ["sha1", "sha256"])
def test_every_truncation_is_a_format_error(bank: str) -> None:
    items, _ = _sample_list()
    data = serialize_binary(items, bank)
    ends = []
    total = 0
    for e in items:
        total += len(serialize_binary([e], bank))
        ends.append(total)
    assert total == len(data)
    for cut in range(len(data)):
        if cut == 0 or cut in ends:
            expected = ends.index(cut) + 1 if cut else 0
            assert len(parse_binary(data[:cut], bank)) == expected
            continue
        with pytest.raises(imaguard.FormatError):
            parse_binary(data[:cut], bank)
        with pytest.raises(imaguard.FormatError):
            list(iter_binary(data[:cut], bank))


def test_truncation_becomes_a_parse_finding_after_the_good_records() -> None:
    items, ends = _sample_list()
    data = serialize_binary(items)
    recs, problem = records_from_binary(data[: ends[2] + 7])
    assert len(recs) == 3
    assert problem is not None
    assert problem.code == "parse"


def test_ascii_cut_in_the_fixed_columns_is_a_format_error() -> None:
    items, _ = _sample_list()
    for line in serialize_ascii(items).splitlines():
        fixed = len(b"10 ") + 40 + 1 + len(line.split(b" ")[2])
        for cut in range(1, fixed):
            with pytest.raises(imaguard.FormatError):
                parse_ascii(line[:cut] + b"\n")


# -- bad lengths and bad values ---------------------------------------------------------

_GOOD_TD = td_of(b"sha256:\0" + b"\x01" * 32, b"/bin/x\0")
_GOOD_DIGEST = hashlib.sha1(_GOOD_TD).digest()  # noqa: S324


def _rec(
    pcr: int = 10,
    digest: bytes = _GOOD_DIGEST,
    name: bytes = b"ima-ng",
    name_len: int | None = None,
    td: bytes = _GOOD_TD,
    td_len: int | None = None,
) -> bytes:
    return (
        u32(pcr)
        + digest
        + u32(len(name) if name_len is None else name_len)
        + name
        + u32(len(td) if td_len is None else td_len)
        + td
    )


def test_the_reference_record_is_good() -> None:
    (r,) = parse_binary(_rec())
    assert r.entry.name == b"/bin/x"


@pytest.mark.parametrize(
    ("label", "data"),
    [
        ("pcr 24", _rec(pcr=24)),
        ("pcr 2^32-1", _rec(pcr=0xFFFFFFFF)),
        ("template name length 0", _rec(name=b"", name_len=0)),
        ("template name length 256", _rec(name=b"i" * 256)),
        ("template name length huge", _rec(name_len=0xFFFFFFF0)),
        ("template data length 16 MiB + 1", _rec(td_len=(1 << 24) + 1)),
        ("template data length 2^32-1", _rec(td_len=0xFFFFFFFF)),
        ("template data length beyond the file", _rec(td_len=len(_GOOD_TD) + 1)),
        ("field length beyond the data", _rec(td=u32(1000) + _GOOD_TD[4:])),
        ("field length 2^32-1", _rec(td=u32(0xFFFFFFFF) + _GOOD_TD[4:])),
        ("bytes after the last field", _rec(td=_GOOD_TD + b"\0")),
        ("a field missing", _rec(td=_GOOD_TD[: 4 + 40])),
        ("unknown template", _rec(name=b"ima-nope")),
        ("non-ASCII template name", _rec(name=b"ima-\xc3\xa9")),
        ("template name with NUL", _rec(name=b"ima-ng\0")),
        ("ima name length 256", u32(10) + b"\x01" * 20 + u32(3) + b"ima" + b"\x02" * 20 + u32(256)),
        (
            "ima name beyond the file",
            u32(10) + b"\x01" * 20 + u32(3) + b"ima" + b"\x02" * 20 + u32(9),
        ),
        (
            "n-ng of 4097 bytes",
            _rec(td=td_of(b"sha256:\0" + b"\x01" * 32, b"/" + b"a" * 4096 + b"\0")),
        ),
        ("garbage", b"\xff" * 100),
        ("a few bytes", b"\x0a\x00"),
    ],
)
def test_bad_records_are_format_errors(label: str, data: bytes) -> None:
    with pytest.raises(imaguard.FormatError):
        parse_binary(data)
    # After a good record too: the error names the second record.
    with pytest.raises(imaguard.FormatError, match="record 1"):
        parse_binary(_rec() + data)


def test_a_name_of_4096_bytes_is_accepted() -> None:
    td = td_of(b"sha256:\0" + b"\x01" * 32, b"/" + b"a" * 4095 + b"\0")
    (r,) = parse_binary(_rec(td=td, digest=hashlib.sha1(td).digest()))  # noqa: S324
    assert len(r.entry.name) == 4096


def test_template_data_of_16_mib_is_not_refused_for_its_length() -> None:
    """The limit is > 16 MiB; a 16 MiB length that is merely truncated says so."""
    with pytest.raises(imaguard.FormatError, match="truncated"):
        parse_binary(_rec(td_len=1 << 24))


@pytest.mark.parametrize(
    "line",
    [
        b"10",
        b"10 abcd",
        b"xx " + b"0" * 40 + b" ima-ng sha1:" + b"00" * 20 + b" /x",
        b"10 " + b"z" * 40 + b" ima-ng sha1:" + b"00" * 20 + b" /x",
        b"10 " + b"a" * 38 + b" ima-ng sha1:" + b"00" * 20 + b" /x",
        b"24 " + b"a" * 40 + b" ima-ng sha1:" + b"00" * 20 + b" /x",
        b"10 " + b"a" * 40 + b" ima-nope sha1:" + b"00" * 20 + b" /x",
        b"10 " + b"a" * 40 + b" ima-ng sha1:" + b"00" * 20,
        b"10 " + b"a" * 40 + b" ima-ng sha1:" + b"00" * 20 + b" /x extra",
        b"10 " + b"a" * 40 + b" ima-ng sha1:zz /x",
        b"10 " + b"a" * 40 + b" ima-ng sha1" + b"00" * 20 + b" /x",
        b"10 " + b"a" * 40 + b" ima-sig sha1:" + b"00" * 20 + b" /x 03zz",
        b"10 " + b"a" * 40 + b" ima-\xff sha1:" + b"00" * 20 + b" /x",
        b"10 " + b"a" * 40 + b" d-ng|n-ng|iuid sha1:" + b"00" * 20 + b" /x -5",
    ],
)
def test_bad_ascii_lines_are_format_errors(line: bytes) -> None:
    with pytest.raises(imaguard.FormatError):
        parse_ascii(line + b"\n")


def test_ascii_line_for_the_wrong_bank_is_a_format_error() -> None:
    entry = TemplateEntry(
        10, TemplateDescriptor.lookup("ima-ng"), (b"sha1:\0" + b"1" * 20, b"/x\0")
    )
    with pytest.raises(imaguard.FormatError):
        parse_ascii(serialize_ascii([entry], "sha256"), "sha1")


# -- fuzzing: nothing but FormatError ---------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), bank=st.sampled_from(["sha1", "sha256"]))
def test_random_bytes_parse_or_raise_format_error(data: bytes, bank: str) -> None:
    with contextlib.suppress(imaguard.FormatError):
        parse_binary(data, bank)
    records_from_binary(data, bank)  # never raises: a problem is a finding


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(entries(), min_size=1, max_size=4),
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("sid")),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_lists_parse_or_raise_format_error(
    items: list[TemplateEntry], edits: list[tuple[int, int, str]]
) -> None:
    buf = bytearray(serialize_binary(items))
    text = bytearray(serialize_ascii(items))
    for target in (buf, text):
        for pos, value, op in edits:
            i = pos % (len(target) + 1)
            if op == "s" and i < len(target):
                target[i] = value
            elif op == "i":
                target[i:i] = bytes([value])
            elif op == "d" and i < len(target):
                del target[i]
    with contextlib.suppress(imaguard.FormatError):
        parse_binary(bytes(buf))
    with contextlib.suppress(imaguard.FormatError):
        parse_ascii(bytes(text))
    # The verifier's readers never raise: problems become findings.
    records_from_binary(bytes(buf))
    records_from_ascii(bytes(text))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.binary(max_size=300))
def test_random_ascii_parses_or_raises_format_error(text: bytes) -> None:
    with contextlib.suppress(imaguard.FormatError):
        parse_ascii(text)
    records_from_ascii(text)
