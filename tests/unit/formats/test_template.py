"""Templates and field encodings, checked against values built by hand from the spec.

Spec kernel-ima.md §4.1 (descriptors), §4.2 (field bytes), §4.3 (template digest),
§4.4 (binary record), §4.5 (ASCII line), §4.6 (violations). Every expected value here
is assembled with ``struct``/``hashlib`` from the spec's description, never by calling
the code under test.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imaguard
from imaguard.errors import FormatError
from imaguard.formats.measurelist import (
    parse_ascii,
    parse_binary,
    serialize_ascii,
    serialize_binary,
)
from imaguard.formats.template import (
    TEMPLATES,
    TemplateDescriptor,
    TemplateEntry,
    decode_digest_field,
    encode_digest_ng,
    encode_digest_ngv2,
    encode_name,
    render_field,
    unrender_field,
)
from imaguard.measure import SoftwarePcrs, buffer_entry, file_entry, violation_entry


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()  # noqa: S324 - the kernel's template hash


def td_of(*fields: bytes) -> bytes:
    """Template data of a normal template: u32 len || bytes, per field (§4.3)."""
    return b"".join(u32(len(f)) + f for f in fields)


def record(pcr: int, digest: bytes, name: bytes, td: bytes) -> bytes:
    """A binary record of a normal template (§4.4)."""
    return u32(pcr) + digest + u32(len(name)) + name + u32(len(td)) + td


D256 = hashlib.sha256(b"file content").digest()
D1 = sha1(b"file content")
SIG = bytes.fromhex("030204aabbccdd0004") + b"\x11\x22\x33\x44"


# -- descriptors (§4.1) -----------------------------------------------------------------

SPEC_TEMPLATES = {
    "ima": "d|n",
    "ima-ng": "d-ng|n-ng",
    "ima-ngv2": "d-ngv2|n-ng",
    "ima-sig": "d-ng|n-ng|sig",
    "ima-sigv2": "d-ngv2|n-ng|sig",
    "ima-buf": "d-ng|n-ng|buf",
    "ima-modsig": "d-ng|n-ng|sig|d-modsig|modsig",
    "evm-sig": "d-ng|n-ng|evmsig|xattrnames|xattrlengths|xattrvalues|iuid|igid|imode",
}


@pytest.mark.parametrize(("name", "fmt"), SPEC_TEMPLATES.items())
def test_builtin_templates_have_the_spec_fields(name: str, fmt: str) -> None:
    desc = TemplateDescriptor.lookup(name)
    assert desc.name == name
    assert desc.fields == tuple(fmt.split("|"))
    assert desc.is_ima is (name == "ima")


def test_every_builtin_is_covered() -> None:
    assert set(TEMPLATES) == set(SPEC_TEMPLATES)


def test_custom_format_string_is_its_own_name() -> None:
    desc = TemplateDescriptor.lookup("d-ng|n-ng|iuid|igid|imode")
    assert desc.name == "d-ng|n-ng|iuid|igid|imode"
    assert desc.fields == ("d-ng", "n-ng", "iuid", "igid", "imode")
    assert not desc.is_ima


@pytest.mark.parametrize(
    "bad",
    ["ima-foo", "", "d-ng|", "d-ng|n-ng|nosuchfield", "|".join(["d-ng"] * 16), "x" * 300],
)
def test_unknown_templates_are_refused(bad: str) -> None:
    with pytest.raises(FormatError):
        TemplateDescriptor.lookup(bad)


@pytest.mark.parametrize("fmt", ["d|n", "d-ng|n-ng", "d-ng|n-ng|sig"])
def test_custom_format_equal_to_a_builtin_keeps_the_format_as_name(fmt: str) -> None:
    """A custom template (ima_template_fmt=) is named "" and *displayed* by its format
    string (§4.1); only the template named exactly ``ima`` is hashed without lengths
    and written without a data length (§4.3, §4.4). So a record named "d|n" is a normal
    template: length-prefixed fields, a data length, SHA1 over u32 len || data."""
    desc = TemplateDescriptor.lookup(fmt)
    assert desc.name == fmt
    assert not desc.is_ima
    fields = tuple(
        {
            "d": D1,
            "n": b"/bin/x\0",
            "d-ng": b"sha256:\0" + D256,
            "n-ng": b"/bin/x\0",
            "sig": b"",
        }[f]
        for f in desc.fields
    )
    entry = TemplateEntry(10, desc, fields)
    td = td_of(*fields)
    assert entry.template_data() == td
    assert serialize_binary([entry]) == record(10, sha1(td), fmt.encode(), td)


def test_kernel_record_of_the_custom_format_d_n_is_decoded_as_a_normal_template() -> None:
    """A kernel booted with ima_template_fmt=d|n writes records named "d|n" with a data
    length and length-prefixed fields (§4.4: only the template named ``ima`` is special).
    They must decode to d = the 20-byte digest and n = the name, and re-serialize to the
    same bytes."""
    n = b"/bin/x\0"
    td = td_of(D1, n)
    data = record(10, sha1(td), b"d|n", td)
    (rec,) = parse_binary(data)
    assert rec.entry.fields == (D1, n)
    assert rec.entry.template_data() == td
    assert rec.entry.template_digest() == rec.digest
    assert serialize_binary([rec.entry]) == data


# -- field encodings (§4.2) -------------------------------------------------------------


def test_d_ng_has_algo_colon_nul_prefix_even_for_sha1() -> None:
    assert encode_digest_ng("sha256", D256) == b"sha256:\0" + D256
    assert encode_digest_ng("sha1", D1) == b"sha1:\0" + D1
    d512 = hashlib.sha512(b"x").digest()
    assert encode_digest_ng("sha512", d512) == b"sha512:\0" + d512


def test_d_ngv2_has_kind_and_algo_prefix() -> None:
    assert encode_digest_ngv2("ima", "sha256", D256) == b"ima:sha256:\0" + D256
    assert encode_digest_ngv2("verity", "sha256", D256) == b"verity:sha256:\0" + D256
    with pytest.raises(FormatError):
        encode_digest_ngv2("fsverity", "sha256", D256)


def test_digest_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(FormatError):
        encode_digest_ng("sha256", D1)


@pytest.mark.parametrize(
    ("field_id", "data", "expect"),
    [
        ("d-ng", b"sha256:\0" + D256, (None, "sha256", D256)),
        ("d-ng", b"sha1:\0" + D1, (None, "sha1", D1)),
        ("d-ngv2", b"verity:sha256:\0" + D256, ("verity", "sha256", D256)),
        ("d-modsig", b"sha256:\0" + D256, (None, "sha256", D256)),
    ],
)
def test_decode_digest_field(field_id: str, data: bytes, expect: tuple[object, ...]) -> None:
    kind, algo, digest = decode_digest_field(data, field_id)
    assert (kind, algo.name, digest) == expect


@pytest.mark.parametrize(
    ("field_id", "data"),
    [
        ("d-ng", b"sha256" + D256),  # no ":\0"
        ("d-ng", b"sha256:\0" + D1),  # wrong size
        ("d-ng", b"nosuch:\0" + D256),
        ("d-ngv2", b"sha256:\0" + D256),  # v2 needs the kind
        ("d-ng", b"ima:sha256:\0" + D256),  # v1 must not have one
    ],
)
def test_decode_digest_field_refuses_malformed(field_id: str, data: bytes) -> None:
    with pytest.raises(FormatError):
        decode_digest_field(data, field_id)


def test_names_are_nul_terminated_with_spaces_as_underscores() -> None:
    assert encode_name("/usr/bin/my tool") == b"/usr/bin/my_tool\0"
    assert encode_name(b"/a b c") == b"/a_b_c\0"
    assert encode_name("boot_aggregate") == b"boot_aggregate\0"


def test_names_longer_than_the_kernel_allows_are_refused() -> None:
    assert encode_name(b"/" + b"a" * 4095) == b"/" + b"a" * 4095 + b"\0"
    with pytest.raises(FormatError):
        encode_name(b"/" + b"a" * 4096)
    with pytest.raises(FormatError):
        encode_name(b"/with\0nul")


def test_ima_n_field_is_cut_to_255_characters() -> None:
    long = b"/" + b"x" * 299
    assert encode_name(long, "n") == long[:255] + b"\0"
    assert encode_name(long, "n-ng") == long + b"\0"


def test_non_utf8_names_stay_raw_bytes() -> None:
    assert encode_name(b"/tmp/\xff\xfe name") == b"/tmp/\xff\xfe_name\0"


@pytest.mark.parametrize(
    ("field_id", "data", "text"),
    [
        ("d", D1, D1.hex().encode()),
        ("n", b"/a_b\0", b"/a_b"),
        ("n-ng", b"/a_b\0", b"/a_b"),
        ("d-ng", b"sha1:\0" + D1, b"sha1:" + D1.hex().encode()),
        ("d-ngv2", b"ima:sha256:\0" + D256, b"ima:sha256:" + D256.hex().encode()),
        ("sig", SIG, SIG.hex().encode()),
        ("sig", b"", b""),
        ("buf", b"6.1.0", b"6.1.0".hex().encode()),
        ("iuid", u32(1000), b"1000"),
        ("igid", u32(4294967295), b"4294967295"),
        ("imode", struct.pack("<H", 0o100644), b"33188"),
        ("xattrnames", b"security.ima|security.evm\0", b"security.ima|security.evm"),
        ("xattrlengths", u32(5) + u32(9), (u32(5) + u32(9)).hex().encode()),
    ],
)
def test_field_rendering_and_back(field_id: str, data: bytes, text: bytes) -> None:
    assert render_field(field_id, data) == text
    assert unrender_field(field_id, text) == data


@pytest.mark.parametrize(
    ("field_id", "text"),
    [("sig", b"zz"), ("iuid", b"-1"), ("iuid", b"4294967296"), ("imode", b"70000"), ("d", b"abc")],
)
def test_bad_renderings_are_format_errors(field_id: str, text: bytes) -> None:
    with pytest.raises(FormatError):
        unrender_field(field_id, text)


# -- template digest, binary record and ASCII line per template (§4.3-§4.5) -------------


def test_ima_ng_known_answer() -> None:
    desc = TemplateDescriptor.lookup("ima-ng")
    d_ng = b"sha256:\0" + D256
    n_ng = b"/usr/bin/my_tool\0"
    entry = TemplateEntry(10, desc, (d_ng, encode_name("/usr/bin/my tool")))
    td = u32(len(d_ng)) + d_ng + u32(len(n_ng)) + n_ng
    assert entry.template_data() == td
    assert entry.template_digest("sha1") == sha1(td)
    assert entry.template_digest("sha256") == hashlib.sha256(td).digest()
    assert entry.template_digest("sha512") == hashlib.sha512(td).digest()
    assert entry.name == b"/usr/bin/my_tool"
    assert serialize_binary([entry]) == record(10, sha1(td), b"ima-ng", td)
    assert serialize_binary([entry], "sha256") == record(
        10, hashlib.sha256(td).digest(), b"ima-ng", td
    )
    line = f"10 {sha1(td).hex()} ima-ng sha256:{D256.hex()} /usr/bin/my_tool\n".encode()
    assert serialize_ascii([entry]) == line


def test_ima_ng_with_a_sha1_file_digest_keeps_the_sha1_prefix() -> None:
    entry = TemplateEntry(
        10, TemplateDescriptor.lookup("ima-ng"), (b"sha1:\0" + D1, b"/etc/hosts\0")
    )
    td = td_of(b"sha1:\0" + D1, b"/etc/hosts\0")
    assert entry.template_digest() == sha1(td)
    assert serialize_ascii([entry]).endswith(f" ima-ng sha1:{D1.hex()} /etc/hosts\n".encode())


def test_ima_template_known_answer() -> None:
    """``ima``: SHA1(d[20] || name zero-padded to 256); binary without a data length,
    ``d`` raw, ``n`` as u32 strlen + name without its NUL (§4.3, §4.4)."""
    desc = TemplateDescriptor.lookup("ima")
    entry = TemplateEntry(10, desc, (D1, encode_name("/bin/a b", "n")))
    assert entry.fields[1] == b"/bin/a_b\0"
    digest = sha1(D1 + b"/bin/a_b".ljust(256, b"\0"))
    assert entry.template_digest("sha1") == digest
    assert serialize_binary([entry]) == (
        u32(10) + digest + u32(3) + b"ima" + D1 + u32(8) + b"/bin/a_b"
    )
    assert serialize_ascii([entry]) == f"10 {digest.hex()} ima {D1.hex()} /bin/a_b\n".encode()
    (parsed,) = parse_binary(serialize_binary([entry]))
    assert parsed.entry == entry
    assert parsed.digest == digest


def test_ima_template_with_a_255_character_name() -> None:
    name = b"/" + b"n" * 254
    entry = TemplateEntry(10, TemplateDescriptor.lookup("ima"), (D1, name + b"\0"))
    assert entry.template_digest() == sha1(D1 + name + b"\0")
    (parsed,) = parse_binary(serialize_binary([entry]))
    assert parsed.entry == entry


def test_ima_sig_signed_and_unsigned_lines() -> None:
    desc = TemplateDescriptor.lookup("ima-sig")
    d_ng = b"sha256:\0" + D256
    signed = TemplateEntry(10, desc, (d_ng, b"/usr/bin/bash\0", SIG))
    unsigned = TemplateEntry(10, desc, (d_ng, b"/usr/bin/unsigned_tool\0", b""))
    td_signed = td_of(d_ng, b"/usr/bin/bash\0", SIG)
    td_unsigned = td_of(d_ng, b"/usr/bin/unsigned_tool\0", b"")
    assert td_unsigned.endswith(b"\0\0\0\0")  # an empty sig is u32 0 (keylime.md §4)
    assert signed.template_digest() == sha1(td_signed)
    assert unsigned.template_digest() == sha1(td_unsigned)
    text = serialize_ascii([signed, unsigned])
    first, second = text.split(b"\n")[:2]
    assert (
        first
        == (
            f"10 {sha1(td_signed).hex()} ima-sig sha256:{D256.hex()} /usr/bin/bash {SIG.hex()}"
        ).encode()
    )
    # The kernel prints a space before every field: an empty sig leaves a trailing space.
    assert (
        second
        == (
            f"10 {sha1(td_unsigned).hex()} ima-sig sha256:{D256.hex()} /usr/bin/unsigned_tool "
        ).encode()
    )
    assert [r.entry for r in parse_ascii(text)] == [signed, unsigned]


def test_ima_sig_line_without_its_trailing_space_is_refused() -> None:
    entry = TemplateEntry(
        10, TemplateDescriptor.lookup("ima-sig"), (b"sha256:\0" + D256, b"/x\0", b"")
    )
    line = serialize_ascii([entry])
    assert line.endswith(b" \n")
    with pytest.raises(FormatError):
        parse_ascii(line.replace(b" \n", b"\n"))


def test_ima_ngv2_known_answer() -> None:
    d = b"verity:sha256:\0" + D256
    entry = TemplateEntry(10, TemplateDescriptor.lookup("ima-ngv2"), (d, b"/v\0"))
    td = td_of(d, b"/v\0")
    assert serialize_binary([entry]) == record(10, sha1(td), b"ima-ngv2", td)
    assert serialize_ascii([entry]) == (
        f"10 {sha1(td).hex()} ima-ngv2 verity:sha256:{D256.hex()} /v\n".encode()
    )


def test_ima_sigv2_known_answer() -> None:
    d = b"ima:sha256:\0" + D256
    entry = TemplateEntry(10, TemplateDescriptor.lookup("ima-sigv2"), (d, b"/s\0", SIG))
    td = td_of(d, b"/s\0", SIG)
    assert serialize_binary([entry]) == record(10, sha1(td), b"ima-sigv2", td)
    assert serialize_ascii([entry]).endswith(f" /s {SIG.hex()}\n".encode())


def test_ima_buf_known_answer() -> None:
    entry = buffer_entry("kernel_version", b"6.1.0-amd64")
    digest = hashlib.sha256(b"6.1.0-amd64").digest()
    fields = (b"sha256:\0" + digest, b"kernel_version\0", b"6.1.0-amd64")
    assert entry.fields == fields
    td = td_of(*fields)
    assert serialize_binary([entry]) == record(10, sha1(td), b"ima-buf", td)
    assert (
        serialize_ascii([entry])
        == (
            f"10 {sha1(td).hex()} ima-buf sha256:{digest.hex()} kernel_version "
            f"{b'6.1.0-amd64'.hex()}\n"
        ).encode()
    )


def test_ima_modsig_without_modsig_leaves_three_empty_fields() -> None:
    desc = TemplateDescriptor.lookup("ima-modsig")
    fields = (b"sha256:\0" + D256, b"/lib/modules/x.ko\0", b"", b"", b"")
    entry = TemplateEntry(10, desc, fields)
    td = td_of(*fields)
    assert serialize_binary([entry]) == record(10, sha1(td), b"ima-modsig", td)
    assert serialize_ascii([entry]) == (
        f"10 {sha1(td).hex()} ima-modsig sha256:{D256.hex()} /lib/modules/x.ko   \n".encode()
    )
    assert parse_ascii(serialize_ascii([entry]))[0].entry == entry


def test_ima_modsig_with_modsig() -> None:
    desc = TemplateDescriptor.lookup("ima-modsig")
    dmod = hashlib.sha256(b"module without sig").digest()
    pkcs7 = b"\x30\x82\x01\x00" + b"\x05" * 16
    fields = (b"sha256:\0" + D256, b"/m.ko\0", b"", b"sha256:\0" + dmod, pkcs7)
    entry = TemplateEntry(10, desc, fields)
    td = td_of(*fields)
    assert entry.template_digest() == sha1(td)
    assert serialize_ascii([entry]).endswith(
        f" /m.ko  sha256:{dmod.hex()} {pkcs7.hex()}\n".encode()
    )


def test_evm_sig_known_answer() -> None:
    desc = TemplateDescriptor.lookup("evm-sig")
    names = b"security.ima|security.selinux\0"
    lengths = u32(3) + u32(5)
    values = b"\x04\x04\x00" + b"ctx\0\0"
    fields = (
        b"sha256:\0" + D256,
        b"/etc/passwd\0",
        b"",
        names,
        lengths,
        values,
        u32(1000),
        u32(100),
        struct.pack("<H", 0o100644),
    )
    entry = TemplateEntry(10, desc, fields)
    td = td_of(*fields)
    assert serialize_binary([entry]) == record(10, sha1(td), b"evm-sig", td)
    assert (
        serialize_ascii([entry])
        == (
            f"10 {sha1(td).hex()} evm-sig sha256:{D256.hex()} /etc/passwd  "
            f"security.ima|security.selinux {lengths.hex()} {values.hex()} 1000 100 33188\n"
        ).encode()
    )
    assert parse_ascii(serialize_ascii([entry]))[0].entry == entry


def test_custom_template_known_answer() -> None:
    fmt = "d-ng|n-ng|iuid|igid|imode"
    fields = (b"sha1:\0" + D1, b"/c\0", u32(0), u32(0), struct.pack("<H", 0o100755))
    entry = TemplateEntry(11, TemplateDescriptor.lookup(fmt), fields)
    td = td_of(*fields)
    assert serialize_binary([entry]) == record(11, sha1(td), fmt.encode(), td)
    assert serialize_ascii([entry]) == (
        f"11 {sha1(td).hex()} {fmt} sha1:{D1.hex()} /c 0 0 33261\n".encode()
    )


def test_single_digit_pcr_is_padded_to_two_columns() -> None:
    entry = TemplateEntry(5, TemplateDescriptor.lookup("ima-ng"), (b"sha1:\0" + D1, b"/x\0"))
    assert serialize_ascii([entry]).startswith(b" 5 ")
    assert parse_ascii(serialize_ascii([entry]))[0].entry == entry


def test_template_names_and_hashes_use_underscores_for_spaces() -> None:
    """Spaces become '_' in the template data itself: the hash of "a b" and "a_b" agree."""
    desc = TemplateDescriptor.lookup("ima-ng")
    d = b"sha256:\0" + D256
    spaced = TemplateEntry(10, desc, (d, encode_name("/opt/my app/run me")))
    assert spaced.fields[1] == b"/opt/my_app/run_me\0"
    assert spaced.template_digest() == sha1(td_of(d, b"/opt/my_app/run_me\0"))
    assert b"/opt/my_app/run_me\n" in serialize_ascii([spaced])


# -- violations (§4.6) ------------------------------------------------------------------


@pytest.mark.parametrize("template", ["ima-ng", "ima-sig", "ima"])
def test_violation_stores_zeros_and_extends_ff(template: str) -> None:
    desc = TemplateDescriptor.lookup(template)
    entry = violation_entry("/var/log/app.log", desc)
    assert entry.violation
    for bank, size in (("sha1", 20), ("sha256", 32), ("sha384", 48), ("sha512", 64)):
        assert entry.template_digest(bank) == b"\0" * size
        assert entry.extend_value(bank) == b"\xff" * size
    if template == "ima":
        assert entry.fields == (b"\0" * 20, b"/var/log/app.log\0")
    else:
        assert entry.fields[0] == b"sha256:\0" + b"\0" * 32
        assert entry.fields[1] == b"/var/log/app.log\0"
    binary = serialize_binary([entry])
    assert binary[4:24] == b"\0" * 20
    line = serialize_ascii([entry])
    assert line.startswith(b"10 " + b"0" * 40 + b" " + template.encode() + b" ")
    (parsed,) = parse_binary(binary)
    assert parsed.entry.violation
    (parsed_a,) = parse_ascii(line)
    assert parsed_a.entry.violation
    pcrs = SoftwarePcrs(("sha1", "sha256"))
    pcrs.extend_entry(entry)
    assert pcrs.values["sha1"][10] == sha1(b"\0" * 20 + b"\xff" * 20)
    assert pcrs.values["sha256"][10] == hashlib.sha256(b"\0" * 32 + b"\xff" * 32).digest()


def test_violation_ascii_line_matches_the_spec_example() -> None:
    entry = violation_entry("/var/log/app.log", TemplateDescriptor.lookup("ima-ng"))
    assert serialize_ascii([entry]) == (
        b"10 " + b"0" * 40 + b" ima-ng sha256:" + b"0" * 64 + b" /var/log/app.log\n"
    )


# -- entries as the measuring code builds them ------------------------------------------


def test_file_entry_ima_ng(tmp_path: Path) -> None:
    p = tmp_path / "a file"
    p.write_bytes(b"hello\n")
    entry = file_entry(p, TemplateDescriptor.lookup("ima-ng"), store="sigfile")
    real = str(p.resolve()).replace(" ", "_").encode()
    assert entry.fields == (b"sha256:\0" + hashlib.sha256(b"hello\n").digest(), real + b"\0")
    entry1 = file_entry(p, TemplateDescriptor.lookup("ima"), store="sigfile")
    assert entry1.fields[0] == sha1(b"hello\n")
    entry512 = file_entry(
        p, TemplateDescriptor.lookup("ima-ng"), ima_hash="sha512", store="sigfile"
    )
    assert entry512.fields[0] == b"sha512:\0" + hashlib.sha512(b"hello\n").digest()


def test_ima_template_long_path_is_replaced_by_the_last_component(tmp_path: Path) -> None:
    """``n`` (template ``ima``): "A path longer than 255 characters is replaced by the
    dentry's last component" (spec §4.2; kernel ima_eventname_init_common). Truncating
    to 255 characters is only for events without a file."""
    d = tmp_path / ("d" * 120) / ("e" * 120)
    d.mkdir(parents=True)
    p = d / "prog"
    p.write_bytes(b"x")
    assert len(str(p.resolve())) > 255
    entry = file_entry(p, TemplateDescriptor.lookup("ima"), store="sigfile")
    assert entry.fields[1] == b"prog\0"
    # ima-ng has no limit: the whole path.
    entry_ng = file_entry(p, TemplateDescriptor.lookup("ima-ng"), store="sigfile")
    assert entry_ng.fields[1] == os.fsencode(p.resolve()) + b"\0"


def test_file_entry_ima_sig_carries_the_stored_signature(
    tmp_path: Path, rsa_key: imaguard.PrivateKey
) -> None:
    p = tmp_path / "signed"
    p.write_bytes(b"signed content\n")
    store = imaguard.SidecarStore()
    value = imaguard.sign_file(p, rsa_key, "sha384", store)
    entry = file_entry(p, TemplateDescriptor.lookup("ima-sig"), store=store)
    assert entry.fields[2] == value.serialize()
    # The digest algorithm follows the signature's (spec §3.7), not ima_hash.
    assert entry.fields[0] == b"sha384:\0" + hashlib.sha384(b"signed content\n").digest()


# -- property: any entry's digest is the hash of the hand-built template data ------------

_name = st.binary(min_size=1, max_size=64).filter(lambda b: b"\0" not in b)


@settings(deadline=None)
@given(name=_name, digest=st.binary(min_size=32, max_size=32), sig=st.binary(max_size=80))
def test_ima_sig_digest_property(name: bytes, digest: bytes, sig: bytes) -> None:
    n = encode_name(name)
    assert b" " not in n
    fields = (b"sha256:\0" + digest, n, sig)
    entry = TemplateEntry(10, TemplateDescriptor.lookup("ima-sig"), fields)
    td = td_of(*fields)
    for bank in ("sha1", "sha256", "sha384", "sha512"):
        assert entry.template_digest(bank) == hashlib.new(bank, td).digest()
