"""What the fuzzers found (docs/reliability.md, "Fuzzing"), each pinned as a unit test: the
parser now refuses the input with one imaguard error that names what is wrong.

The inputs the fuzzers produced are also kept under fuzz/regressions/ and replayed through
the harnesses by tests/unit/test_fuzz_harnesses.py.
"""

from __future__ import annotations

import json
import struct

import pytest

from imaguard.errors import FormatError
from imaguard.formats import digestlist, measurelist
from imaguard.formats.hashalgo import by_name
from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.template import unrender_field
from imaguard.service import ConfigError, ProtocolError, parse_config, parse_owner
from imaguard.service._protocol import parse as parse_frame

DIGEST = bytes(range(32))


def test_a_digest_list_with_nonzero_padding_is_refused() -> None:
    """Found by the digestlist harness: the pad after the source was not checked, so two
    byte strings parsed to the same list (and only one serializes back)."""
    dl = digestlist.DigestList.build("sha256", [(DIGEST, None)], source="abc", with_paths=False)
    data = bytearray(digestlist.serialize(dl))
    pad_at = 34 + 3  # header, source; then three zero bytes up to offset 40
    assert data[pad_at:40] == b"\0" * 3
    assert digestlist.parse(bytes(data)) == dl
    data[pad_at + 1] = 0x3F
    with pytest.raises(FormatError, match="padding after the source field is not zero"):
        digestlist.parse(bytes(data))


def test_an_ascii_digest_field_with_a_nul_byte_is_refused() -> None:
    """Found by the measurelist-ascii harness: a NUL inside the ``<algo>:`` prefix made a
    field that renders back without its ':' (and a list that did not parse again)."""
    with pytest.raises(FormatError, match="contains a NUL byte"):
        unrender_field("d-ng", b"sha\x001:" + DIGEST.hex().encode())
    line = b"10 " + b"00" * 20 + b" ima-ng sha\x00256:" + DIGEST.hex().encode() + b" /bin/x\n"
    with pytest.raises(FormatError, match="NUL"):
        measurelist.parse_ascii(line)
    good = unrender_field("d-ng", b"sha256:" + DIGEST.hex().encode())
    assert good == b"sha256:\0" + DIGEST


def _keylime(**meta: object) -> dict[str, object]:
    return {
        "meta": {"version": 1, **meta},
        "release": 0,
        "digests": {},
        "excludes": [],
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha256", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }


@pytest.mark.parametrize("generator", ["1e9991", "Infinity", "-Infinity"])
def test_a_keylime_generator_of_infinity_is_a_format_error(generator: str) -> None:
    """Found by the keylime harness: int(1e9991) raised OverflowError."""
    text = json.dumps(_keylime(generator=0)).replace('"generator": 0', f'"generator": {generator}')
    with pytest.raises(FormatError, match=r"meta\.generator/release must be integers"):
        RuntimePolicy.parse(text)
    assert RuntimePolicy.parse(json.dumps(_keylime(generator=2))).generator == 2


def test_deeply_nested_json_is_a_format_error() -> None:
    """JSON nested deeper than Python's recursion limit raised RecursionError."""
    with pytest.raises(FormatError, match="nested too deeply"):
        RuntimePolicy.parse("[" * 5000)
    body = b"[" * 5000
    with pytest.raises(ProtocolError, match="nested too deeply") as caught:
        parse_frame(struct.pack(">I", len(body)) + body)
    assert caught.value.code == "bad-frame"


@pytest.mark.parametrize("text", ["a = " + "[" * 4000, "a = " + "{b = " * 3000])
def test_deeply_nested_toml_is_a_config_error(text: str) -> None:
    """tomllib recursed past the recursion limit (RecursionError) on deep arrays/tables."""
    with pytest.raises(ConfigError, match="nested too deeply") as caught:
        parse_config(text, source="deep.toml")
    assert caught.value.key == "(syntax)"
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_owner(text, source="deep-owner.toml")


def test_the_fixes_keep_the_algorithm_table_intact() -> None:
    """The digest-field fix leaves every well-formed prefix alone."""
    for name in ("sha1", "sha256", "sha512"):
        size = by_name(name).digest_size
        text = f"{name}:".encode() + b"ab" * size
        assert unrender_field("d-ng", text) == f"{name}:".encode() + b"\0" + b"\xab" * size


def _ima_record(name: bytes) -> bytes:
    """One binary record of the ``ima`` template (sha1 bank) whose name is ``name``."""
    head = struct.pack("<I", 10) + b"\x11" * 20 + struct.pack("<I", 3) + b"ima"
    return head + b"\x22" * 20 + struct.pack("<I", len(name)) + name


def test_a_binary_ima_name_with_a_nul_byte_is_refused() -> None:
    """Found by the measurelist-binary harness: an ``ima`` name ending in NUL bytes parsed to
    the same entry as the name without them, so the list did not serialize back."""
    (rec,) = measurelist.parse_binary(_ima_record(b"boot_aggregate"))
    assert rec.entry.name == b"boot_aggregate"
    for name in (b"boot_ak\0\0", b"a\0b"):
        with pytest.raises(FormatError, match="record 0 at byte 0: ima name contains a NUL"):
            measurelist.parse_binary(_ima_record(name))
        with pytest.raises(FormatError, match="NUL"):
            list(measurelist.iter_binary(_ima_record(name)))


def test_an_empty_ascii_name_is_stored_with_its_nul() -> None:
    """Found by the measurelist-ascii harness: for an empty ima-ng name the fast reader
    (iter_ascii) stored the field as the kernel does, one NUL byte, but parse_ascii stored
    zero bytes: the two gave different template digests for the same line."""
    line = (
        b"10 " + b"00" * 20 + b" ima-ng sha256:" + DIGEST.hex().encode() + b" \n"
    )  # a violation record: no digest to match, only the template data compared
    (rec,) = measurelist.parse_ascii(line)
    assert rec.entry.fields[1] == b"\0"
    (raw,) = measurelist.iter_ascii(line)
    assert raw.template_data == rec.entry.template_data()
    assert unrender_field("n", b"") == b"\0"
    assert unrender_field("xattrnames", b"") == b""  # no file: the kernel's field is empty
