"""The digest list format, version 1 (imaguard.formats.digestlist): round trips, the layout,
every refusal, and the appended signature's trailer."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaguard.errors import FormatError, TruncatedError
from imaguard.formats import digestlist as dlf
from imaguard.formats.digestlist import DigestList
from imaguard.formats.hashalgo import by_name

SHA256 = by_name("sha256")
HEADER = 34  # magic 8, version 2, algorithm 2, flags 4, count 8, created 8, source length 2


def d(text: str, algo: str = "sha256") -> bytes:
    return hashlib.new(algo, text.encode()).digest()


def sample(with_paths: bool = True) -> DigestList:
    return DigestList.build(
        "sha256",
        [(d("a"), "/usr/bin/a"), (d("b"), "/usr/bin/b"), (d("c"), "/etc/c")],
        created=1_700_000_000,
        source="test:sample=1",
        with_paths=with_paths,
    )


def digests_offset(dl: DigestList) -> int:
    off = HEADER + len(dl.source.encode())
    return off + (-off % 8)


# -- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("with_paths", [True, False])
def test_round_trip(with_paths: bool) -> None:
    dl = sample(with_paths)
    data = dlf.serialize(dl)
    back = dlf.parse(data)
    assert back == dl
    assert back.signature is None
    assert back.created == 1_700_000_000
    assert back.source == "test:sample=1"
    assert back.algorithm is SHA256
    assert (back.paths is None) == (not with_paths)
    assert list(back.digests) == sorted(back.digests)


def test_layout() -> None:
    dl = sample()
    data = dlf.serialize(dl)
    magic, version, algo, flags, count, created, srclen = struct.unpack_from(">8sHHIQQH", data)
    assert (magic, version, algo, flags, count, created) == (
        b"IGDLIST\0",
        1,
        4,
        dlf.FLAG_PATHS,
        3,
        1_700_000_000,
    )
    assert data[HEADER : HEADER + srclen] == b"test:sample=1"
    off = digests_offset(dl)
    assert off % 8 == 0
    assert data[HEADER + srclen : off] == b"\0" * (off - HEADER - srclen)
    assert data[off : off + 96] == b"".join(sorted([d("a"), d("b"), d("c")]))
    # paths: u16 length + bytes, in digest order
    pos = off + 96
    for digest in dl.digests:
        (n,) = struct.unpack_from(">H", data, pos)
        path = data[pos + 2 : pos + 2 + n].decode()
        assert dl.paths is not None
        assert dl.paths[dl.digests.index(digest)] == path
        pos += 2 + n
    assert pos == len(data)
    assert len(dlf.serialize(sample(False))) == off + 96


def test_unicode_and_non_utf8_paths() -> None:
    raw = b"/srv/\xff\xfe-not-utf8"
    weird = raw.decode("utf-8", "surrogateescape")
    dl = DigestList.build("sha256", [(d("x"), "/usr/share/é/日本"), (d("y"), weird)])
    data = dlf.serialize(dl)
    assert raw in data
    assert "/usr/share/é/日本".encode() in data
    back = dlf.parse(data)
    assert back.paths is not None
    assert set(back.paths) == {"/usr/share/é/日本", weird}
    assert back == dl


def test_build_sorts_and_keeps_the_first_path_of_a_duplicate() -> None:
    dl = DigestList.build("sha256", [(d("b"), "/b"), (d("a"), "/a"), (d("b"), "/b2")])
    assert dl.digests == tuple(sorted([d("a"), d("b")]))
    assert dl.paths is not None
    assert dl.paths[dl.digests.index(d("b"))] == "/b"
    assert d("a") in dl
    assert d("zzz") not in dl
    assert "not bytes" not in dl
    assert len(dl) == 2


def test_other_algorithms_and_the_empty_list() -> None:
    for name in ("sha1", "sha384", "sha512", "sha3-256"):
        dl = DigestList.build(name, [(d("a", by_name(name).hashlib_name or ""), None)])
        assert dlf.parse(dlf.serialize(dl)) == dl
    empty = DigestList.build("sha256", [])
    assert dlf.parse(dlf.serialize(empty)) == empty


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.binary(min_size=32, max_size=32),
        st.text(st.characters(codec="utf-8"), max_size=40),
        max_size=40,
    ),
    st.text(st.characters(codec="utf-8"), max_size=60),
    st.booleans(),
)
def test_round_trip_property(entries: dict[bytes, str], source: str, with_paths: bool) -> None:
    dl = DigestList.build(
        "sha256", list(entries.items()), source=source, created=7, with_paths=with_paths
    )
    back = dlf.parse(dlf.serialize(dl))
    assert back == dl
    if with_paths:
        assert back.paths is not None
        assert dict(zip(back.digests, back.paths, strict=True)) == entries


# -- refusals -------------------------------------------------------------------------------
def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_bad_magic() -> None:
    data = b"X" + dlf.serialize(sample())[1:]
    with pytest.raises(FormatError, match="bad magic"):
        dlf.parse(data)


def test_newer_version() -> None:
    with pytest.raises(FormatError, match="version 2 is not supported"):
        dlf.parse(patched(dlf.serialize(sample()), 8, ">H", 2))


@pytest.mark.parametrize("algo_id", [23, 0xFFFF])
def test_unknown_algorithm_id(algo_id: int) -> None:
    with pytest.raises(FormatError, match=f"algorithm id {algo_id}"):
        dlf.parse(patched(dlf.serialize(sample()), 10, ">H", algo_id))


@pytest.mark.parametrize("flags", [0x2, 0x80000000, 0x3])
def test_unknown_flags(flags: int) -> None:
    with pytest.raises(FormatError, match="unknown digest list flags"):
        dlf.parse(patched(dlf.serialize(sample()), 12, ">I", flags))


def test_unsorted_digests() -> None:
    dl = sample(False)
    data = bytearray(dlf.serialize(dl))
    off = digests_offset(dl)
    first, second = data[off : off + 32], data[off + 32 : off + 64]
    data[off : off + 32], data[off + 32 : off + 64] = second, first
    with pytest.raises(FormatError, match="out of order"):
        dlf.parse(bytes(data))


def test_duplicate_digests() -> None:
    dl = sample(False)
    data = bytearray(dlf.serialize(dl))
    off = digests_offset(dl)
    data[off + 32 : off + 64] = data[off : off + 32]
    with pytest.raises(FormatError, match="duplicate"):
        dlf.parse(bytes(data))


def test_truncated_header() -> None:
    data = dlf.serialize(sample())
    for cut in (0, 7, 20, HEADER - 1):
        with pytest.raises(TruncatedError, match="header"):
            dlf.parse(data[:cut])


def test_truncated_source() -> None:
    data = dlf.serialize(sample())
    with pytest.raises(TruncatedError, match="source"):
        dlf.parse(data[: HEADER + 4])


def test_truncated_digests() -> None:
    dl = sample()
    data = dlf.serialize(dl)
    off = digests_offset(dl)
    for cut in (off, off + 1, off + 64, off + 95):
        with pytest.raises(TruncatedError, match="says 3 digests"):
            dlf.parse(data[:cut])


def test_truncated_paths() -> None:
    dl = sample()
    data = dlf.serialize(dl)
    paths_at = digests_offset(dl) + 96
    with pytest.raises(TruncatedError, match="before path 0"):
        dlf.parse(data[:paths_at])
    with pytest.raises(TruncatedError, match="before path 0"):
        dlf.parse(data[: paths_at + 1])
    with pytest.raises(TruncatedError, match="inside path 0"):
        dlf.parse(data[: paths_at + 4])
    with pytest.raises(TruncatedError, match="inside path 2"):
        dlf.parse(data[:-1])


@pytest.mark.parametrize("with_paths", [True, False])
def test_trailing_bytes(with_paths: bool) -> None:
    data = dlf.serialize(sample(with_paths))
    with pytest.raises(FormatError, match="8 bytes follow"):
        dlf.parse(data + b"\0" * 8)


def test_count_that_overstates_the_table() -> None:
    data = patched(dlf.serialize(sample(False)), 16, ">Q", 2**40)
    with pytest.raises(TruncatedError):
        dlf.parse(data)


def test_source_not_utf8_and_too_long() -> None:
    data = bytearray(dlf.serialize(sample()))
    data[HEADER] = 0xFF
    with pytest.raises(FormatError, match="not UTF-8"):
        dlf.parse(bytes(data))
    with pytest.raises(FormatError, match="source length 4097"):
        dlf.parse(patched(dlf.serialize(sample()), 32, ">H", dlf.MAX_SOURCE + 1))
    with pytest.raises(FormatError, match="source is longer"):
        DigestList.build("sha256", [], source="x" * (dlf.MAX_SOURCE + 1))


def test_constructor_refusals() -> None:
    with pytest.raises(FormatError, match="digest 0 is 20 bytes"):
        DigestList(SHA256, (b"\0" * 20,))
    with pytest.raises(FormatError, match="out of order"):
        DigestList(SHA256, (b"\2" * 32, b"\1" * 32))
    with pytest.raises(FormatError, match="2 paths for 1 digests"):
        DigestList(SHA256, (b"\1" * 32,), paths=("/a", "/b"))
    long_path = DigestList.build("sha256", [(d("a"), "/" + "x" * 0x10000)])
    with pytest.raises(FormatError, match="longer than 65535"):
        dlf.serialize(long_path)


# -- the appended signature -----------------------------------------------------------------
VALUE = b"\x03\x02\x04" + b"\xab" * 4 + b"\x00\x10" + b"s" * 16  # shaped like a 0x03 value


def test_append_and_split_round_trip() -> None:
    body = dlf.serialize(sample())
    signed = dlf.append_signature(body, VALUE)
    assert signed.endswith(dlf.SIGNATURE_MAGIC)
    assert signed[: len(body)] == body
    assert dlf.split_signature(signed) == (body, VALUE)
    assert dlf.split_signature(body) == (body, None)
    back = dlf.parse(signed)
    assert back == sample()
    assert back.signature == VALUE


def test_append_refuses_empty_and_oversized_values() -> None:
    body = dlf.serialize(sample())
    with pytest.raises(FormatError, match="signature value"):
        dlf.append_signature(body, b"")
    with pytest.raises(FormatError, match="signature value"):
        dlf.append_signature(body, b"x" * (dlf.MAX_SIGNATURE + 1))


@pytest.mark.parametrize(
    "length", [0, dlf.MAX_SIGNATURE + 1, 0xFFFFFFFF, len(VALUE) + 10_000, len(VALUE) + 1]
)
def test_bad_appended_signature_length(length: int) -> None:
    body = dlf.serialize(sample())
    data = body + VALUE + struct.pack(">I", length) + dlf.SIGNATURE_MAGIC
    if length == len(VALUE) + 1:
        # one byte too long: the body loses its last byte, which parse then notices
        with pytest.raises(FormatError):
            dlf.parse(data)
        return
    with pytest.raises(FormatError, match="out of range"):
        dlf.split_signature(data)
    with pytest.raises(FormatError, match="out of range"):
        dlf.parse(data)


def test_appended_signature_trailer_cut_short() -> None:
    with pytest.raises(TruncatedError, match="cut short"):
        dlf.split_signature(b"\0\0" + dlf.SIGNATURE_MAGIC)


def test_a_signature_that_would_eat_the_header_is_refused() -> None:
    data = b"\0" * 10 + VALUE + struct.pack(">I", len(VALUE) + 10) + dlf.SIGNATURE_MAGIC
    with pytest.raises(FormatError, match="out of range"):
        dlf.split_signature(data)
