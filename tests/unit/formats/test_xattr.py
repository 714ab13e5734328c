"""security.ima / security.evm values (integrity.h; evmctl's output)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imaguard
from imaguard.formats import xattr
from imaguard.formats.hashalgo import ALGORITHMS, HashAlgo, by_name
from imaguard.formats.xattr import (
    DigestNgValue,
    DigestValue,
    HmacValue,
    SignatureValue,
    XattrType,
    digest_value,
    file_id,
    is_signature,
    parse,
)

PROPS = settings(database=None, suppress_health_check=[HealthCheck.too_slow], deadline=None)

SHA1 = by_name("sha1")
MD5 = by_name("md5")
SHA256 = by_name("sha256")
SHA512 = by_name("sha512")

D_SHA1 = hashlib.sha1(b"abc").digest()  # noqa: S324 - test vector; ends in non-zero bytes
D_MD5 = hashlib.md5(b"abc").digest()  # noqa: S324 - test vector
D_SHA256 = hashlib.sha256(b"abc").digest()
D_SHA512 = hashlib.sha512(b"abc").digest()
SIG = bytes(range(256))


# --- hand-built known values (bytes assembled from integrity.h's layouts) ------------------------


def _sig_bytes(type_byte: int, version: int, algo: int, key_id: int, sig: bytes) -> bytes:
    return (
        bytes([type_byte, version, algo])
        + key_id.to_bytes(4, "big")
        + len(sig).to_bytes(2, "big")
        + sig
    )


VALID: dict[str, bytes] = {
    "01-sha1": b"\x01" + D_SHA1,
    "01-md5": b"\x01" + D_MD5,
    "01-md5-padded": b"\x01" + D_MD5 + b"\0\0\0\0",
    "02-hmac": b"\x02" + bytes(range(20)),
    "03-rsa-sha256": _sig_bytes(0x03, 2, 4, 0x1234ABCD, SIG),
    "03-ecdsa-sha1": _sig_bytes(0x03, 2, 2, 0xDEADBEEF, b"\x30\x45" + bytes(69)),
    "03-one-byte-sig": _sig_bytes(0x03, 2, 6, 0, b"\x00"),
    "04-sha256": b"\x04\x04" + D_SHA256,
    "04-sha512": b"\x04\x06" + D_SHA512,
    "04-sha1": b"\x04\x02" + D_SHA1,
    "04-sha3-256": b"\x04\x14" + hashlib.sha3_256(b"abc").digest(),
    "04-sha384": b"\x04\x05" + hashlib.sha384(b"abc").digest(),
    "04-sm3": b"\x04\x11" + bytes(32),
    "04-md4": b"\x04\x00" + bytes(16),
    "04-rmd320": b"\x04\x0a" + bytes(range(40)),
    "05-portable": _sig_bytes(0x05, 2, 4, 0xFFFFFFFF, SIG[:72]),
    "06-verity": _sig_bytes(0x06, 3, 4, 0x00000001, SIG[:71]),
}


def _value_for(name: str) -> imaguard.formats.ImaValue:
    return parse(VALID[name])


# --- known-answer vectors ------------------------------------------------------------------------


def test_kat_0x04_sha256() -> None:
    v = parse(b"\x04\x04" + D_SHA256)
    assert isinstance(v, DigestNgValue)
    assert v.type == XattrType.IMA_XATTR_DIGEST_NG
    assert int(v.type) == 0x04
    assert v.algorithm is SHA256
    assert v.digest == D_SHA256


def test_kat_0x04_sha512() -> None:
    v = parse(b"\x04\x06" + D_SHA512)
    assert isinstance(v, DigestNgValue)
    assert v.algorithm.name == "sha512"
    assert v.digest == D_SHA512


def test_kat_0x01_sha1() -> None:
    v = parse(b"\x01" + D_SHA1)
    assert isinstance(v, DigestValue)
    assert v.type == 0x01
    assert v.digest == D_SHA1
    assert v.algorithm is SHA1
    assert not v.padded


def test_kat_0x01_md5_17_bytes() -> None:
    v = parse(b"\x01" + D_MD5)
    assert isinstance(v, DigestValue)
    assert v.digest == D_MD5
    assert v.algorithm is MD5
    assert not v.padded


def test_kat_0x01_md5_padded_21_bytes() -> None:
    v = parse(b"\x01" + D_MD5 + b"\0\0\0\0")
    assert isinstance(v, DigestValue)
    assert v.digest == D_MD5
    assert v.algorithm is MD5
    assert v.padded


def test_kat_0x01_twenty_bytes_with_a_nonzero_tail_is_sha1() -> None:
    # Only four *zero* bytes make it md5; three zeros and a one is still sha1.
    body = bytes(16) + b"\0\0\0\x01"
    v = parse(b"\x01" + body)
    assert isinstance(v, DigestValue)
    assert v.algorithm is SHA1
    assert v.digest == body


def test_kat_0x02_hmac() -> None:
    v = parse(b"\x02" + bytes(range(20)))
    assert isinstance(v, HmacValue)
    assert v.type == 0x02
    assert v.hmac == bytes(range(20))


def test_kat_0x03_header_fields() -> None:
    raw = b"\x03\x02\x04" + b"\x12\x34\xab\xcd" + b"\x01\x00" + SIG
    assert len(raw) == 265  # ima_sign -a sha256 with RSA-2048 (evmctl 1.4)
    v = parse(raw)
    assert isinstance(v, SignatureValue)
    assert v.type == XattrType.EVM_IMA_XATTR_DIGSIG
    assert v.version == 2
    assert v.algorithm is SHA256
    assert v.key_id == 0x1234ABCD
    assert v.key_id_hex == "1234abcd"
    assert v.signature == SIG


def test_kat_0x03_ecdsa_shape() -> None:
    sig = b"\x30\x45\x02\x20" + bytes(32) + b"\x02\x21" + bytes(33)
    raw = b"\x03\x02\x04" + b"\x00\x00\x00\x2a" + b"\x00\x47" + sig
    assert len(raw) == 80
    v = parse(raw)
    assert isinstance(v, SignatureValue)
    assert v.key_id == 42
    assert v.key_id_hex == "0000002a"
    assert len(v.signature) == 0x47


def test_kat_0x05_portable() -> None:
    raw = b"\x05\x02\x06" + b"\xff\xff\xff\xff" + b"\x00\x03" + b"abc"
    v = parse(raw)
    assert isinstance(v, SignatureValue)
    assert v.type == XattrType.EVM_XATTR_PORTABLE_DIGSIG
    assert v.version == 2
    assert v.algorithm is SHA512
    assert v.key_id == 0xFFFFFFFF
    assert v.signature == b"abc"


def test_kat_0x06_verity() -> None:
    raw = b"\x06\x03\x04" + b"\x01\x02\x03\x04" + b"\x00\x02" + b"\xaa\xbb"
    v = parse(raw)
    assert isinstance(v, SignatureValue)
    assert v.type == XattrType.IMA_VERITY_DIGSIG
    assert v.version == 3
    assert v.key_id == 0x01020304
    assert v.signature == b"\xaa\xbb"


def test_serialize_signature_matches_hand_built_bytes() -> None:
    v = SignatureValue(XattrType.EVM_IMA_XATTR_DIGSIG, SHA256, 0x1234ABCD, SIG)
    assert v.serialize() == b"\x03\x02\x04\x12\x34\xab\xcd\x01\x00" + SIG
    assert v.serialize()[:9] == struct.pack(">BBBIH", 3, 2, 4, 0x1234ABCD, 256)
    v6 = SignatureValue(XattrType.IMA_VERITY_DIGSIG, SHA256, 7, b"xy")
    assert v6.serialize() == b"\x06\x03\x04\x00\x00\x00\x07\x00\x02xy"


def test_serialize_digest_values_match_hand_built_bytes() -> None:
    assert DigestValue(D_SHA1).serialize() == b"\x01" + D_SHA1
    assert DigestValue(D_MD5).serialize() == b"\x01" + D_MD5
    assert DigestValue(D_MD5, padded=True).serialize() == b"\x01" + D_MD5 + bytes(4)
    assert DigestNgValue(SHA256, D_SHA256).serialize() == b"\x04\x04" + D_SHA256
    assert HmacValue(bytes(20)).serialize() == b"\x02" + bytes(20)


def test_signature_header_size_constant() -> None:
    assert xattr.SIGNATURE_HEADER_SIZE == 9


def test_xattr_type_values() -> None:
    assert [int(t) for t in XattrType] == [1, 2, 3, 4, 5, 6]


# --- round trips on the fixed vectors ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID))
def test_serialize_parse_bytes_round_trip(name: str) -> None:
    raw = VALID[name]
    assert parse(raw).serialize() == raw


@pytest.mark.parametrize("name", sorted(VALID))
def test_parse_serialize_value_round_trip(name: str) -> None:
    v = _value_for(name)
    assert parse(v.serialize()) == v


@pytest.mark.parametrize("name", sorted(VALID))
def test_type_specific_parse_agrees_with_dispatch(name: str) -> None:
    raw = VALID[name]
    v = parse(raw)
    assert type(v).parse(raw) == v


@pytest.mark.parametrize("name", sorted(VALID))
def test_parse_accepts_bytearray_and_memoryview(name: str) -> None:
    raw = VALID[name]
    # any bytes-like object works at run time, though the signature says bytes
    assert parse(bytearray(raw)) == parse(raw)  # type: ignore[arg-type]
    assert parse(memoryview(raw)) == parse(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        DigestValue(D_SHA1),
        DigestValue(D_MD5),
        DigestValue(D_MD5, padded=True),
        HmacValue(b"h" * 20),
        DigestNgValue(SHA256, D_SHA256),
        DigestNgValue(SHA512, D_SHA512),
        DigestNgValue(by_name("sha384"), bytes(48)),
        DigestNgValue(by_name("sha3-512"), bytes(64)),
        DigestNgValue(by_name("streebog256"), bytes(32)),
        SignatureValue(XattrType.EVM_IMA_XATTR_DIGSIG, SHA256, 1, SIG),
        SignatureValue(XattrType.EVM_IMA_XATTR_DIGSIG, SHA1, 0, b"s"),
        SignatureValue(XattrType.EVM_XATTR_PORTABLE_DIGSIG, SHA512, 0xFFFFFFFF, SIG[:10]),
        SignatureValue(XattrType.IMA_VERITY_DIGSIG, SHA256, 0xABCDEF01, SIG[:64]),
        SignatureValue(XattrType.EVM_IMA_XATTR_DIGSIG, SHA256, 5, b"\x00" * 0xFFFF),
    ],
    ids=repr,
)
def test_constructed_value_round_trips(value: imaguard.formats.ImaValue) -> None:
    raw = value.serialize()
    assert parse(raw) == value
    assert parse(raw).serialize() == raw
    assert raw[0] == value.type


# --- every truncation ----------------------------------------------------------------------------


def _truncations() -> list[tuple[str, int]]:
    out = []
    for name, raw in sorted(VALID.items()):
        for n in range(len(raw)):
            # Cutting a 21-byte 0x01 value to 17 bytes is a valid md5 value (ima_get_hash_algo).
            if name.startswith("01-") and len(raw) == 21 and n == 17:
                continue
            out.append((name, n))
    return out


@pytest.mark.parametrize(("name", "length"), _truncations())
def test_every_truncation_raises_format_error(name: str, length: int) -> None:
    prefix = VALID[name][:length]
    with pytest.raises(imaguard.FormatError):
        parse(prefix)


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_truncation_raises_format_error_in_type_parser(name: str) -> None:
    raw = VALID[name]
    cls = type(parse(raw))
    for n in range(len(raw)):
        if name.startswith("01-") and len(raw) == 21 and n == 17:
            continue
        try:
            cls.parse(raw[:n])
        except imaguard.FormatError:
            continue
        pytest.fail(f"{cls.__name__}.parse accepted a {n}-byte prefix of {name}")


def test_sha1_value_cut_to_17_bytes_is_md5() -> None:
    v = parse(VALID["01-sha1"][:17])
    assert isinstance(v, DigestValue)
    assert v.algorithm is MD5
    assert v.digest == D_SHA1[:16]


@pytest.mark.parametrize("name", sorted(VALID))
def test_one_extra_byte_raises_format_error(name: str) -> None:
    with pytest.raises(imaguard.FormatError):
        parse(VALID[name] + b"\x00")


# --- bad fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize("type_byte", [0x00, 0x07, 0x08, 0x80, 0xFF])
def test_unknown_type_byte(type_byte: int) -> None:
    raw = bytes([type_byte]) + VALID["03-rsa-sha256"][1:]
    with pytest.raises(imaguard.FormatError, match=f"0x{type_byte:02x}"):
        parse(raw)


@pytest.mark.parametrize("type_byte", [0x00, 0x07, 0xFF])
def test_unknown_type_byte_alone(type_byte: int) -> None:
    with pytest.raises(imaguard.FormatError, match="unknown type"):
        parse(bytes([type_byte]))


@pytest.mark.parametrize("type_byte", [0x00, 0x07, 0xFF])
def test_signature_parser_refuses_unknown_type(type_byte: int) -> None:
    with pytest.raises(imaguard.FormatError, match="unknown type"):
        SignatureValue.parse(bytes([type_byte]) + VALID["03-rsa-sha256"][1:])


@pytest.mark.parametrize("type_byte", [0x01, 0x02, 0x04])
def test_signature_parser_refuses_non_signature_type(type_byte: int) -> None:
    with pytest.raises(imaguard.FormatError, match="not a signature"):
        SignatureValue.parse(bytes([type_byte]) + VALID["03-rsa-sha256"][1:])


@pytest.mark.parametrize(
    ("cls", "raw"),
    [
        (DigestValue, VALID["04-sha256"]),
        (DigestValue, b"\x02" + bytes(20)),
        (DigestNgValue, b"\x01" + D_SHA1),
        (DigestNgValue, b"\x03\x04" + D_SHA256),
        (HmacValue, b"\x01" + bytes(20)),
        (HmacValue, b"\x04" + bytes(20)),
    ],
)
def test_type_parsers_refuse_other_type_bytes(
    cls: type[DigestValue] | type[DigestNgValue] | type[HmacValue], raw: bytes
) -> None:
    with pytest.raises(imaguard.FormatError, match="type byte"):
        cls.parse(raw)


@pytest.mark.parametrize("version", [0, 1, 3, 4, 0xFF])
def test_wrong_version_0x03(version: int) -> None:
    raw = _sig_bytes(0x03, version, 4, 1, SIG)
    with pytest.raises(imaguard.FormatError, match="version"):
        parse(raw)


@pytest.mark.parametrize("version", [0, 1, 3, 0xFF])
def test_wrong_version_0x05(version: int) -> None:
    with pytest.raises(imaguard.FormatError, match="version"):
        parse(_sig_bytes(0x05, version, 4, 1, SIG))


@pytest.mark.parametrize("version", [0, 1, 2, 4, 0xFF])
def test_wrong_version_0x06(version: int) -> None:
    with pytest.raises(imaguard.FormatError, match="version"):
        parse(_sig_bytes(0x06, version, 4, 1, SIG))


def test_version_1_legacy_is_named() -> None:
    # evmctl --rsa (v1): 03 01 <timestamp 4> <algo 0> <hash 1> <keyid 8> <nmpi 1> <bits 2> MPI
    raw = b"\x03\x01" + b"\x00\x00\x00\x00" + b"\x00\x02" + bytes(8) + b"\x01\x08\x00" + SIG
    with pytest.raises(imaguard.FormatError, match="version 1") as exc:
        parse(raw)
    assert "legacy" in str(exc.value)


@pytest.mark.parametrize("algo_id", [23, 24, 0x80, 0xFF])
@pytest.mark.parametrize("type_byte", [0x03, 0x05, 0x06])
def test_signature_algo_id_out_of_range(algo_id: int, type_byte: int) -> None:
    version = 3 if type_byte == 0x06 else 2
    with pytest.raises(imaguard.FormatError, match=str(algo_id)):
        parse(_sig_bytes(type_byte, version, algo_id, 1, SIG))


@pytest.mark.parametrize("algo_id", [23, 24, 0xFF])
def test_digest_ng_algo_id_out_of_range(algo_id: int) -> None:
    with pytest.raises(imaguard.FormatError, match=str(algo_id)):
        parse(bytes([0x04, algo_id]) + bytes(32))


@pytest.mark.parametrize("delta", [-100, -2, -1, 1, 2, 0x7F00])
def test_sig_size_mismatch(delta: int) -> None:
    raw = bytearray(VALID["03-rsa-sha256"])
    struct.pack_into(">H", raw, 7, len(SIG) + delta)
    with pytest.raises(imaguard.FormatError, match="signature bytes"):
        parse(bytes(raw))


@pytest.mark.parametrize("type_byte", [0x05, 0x06])
def test_sig_size_mismatch_other_signature_types(type_byte: int) -> None:
    version = 3 if type_byte == 0x06 else 2
    too_big = bytes([type_byte, version, 4]) + b"\0\0\0\1" + (len(SIG) + 1).to_bytes(2, "big") + SIG
    too_small = (
        bytes([type_byte, version, 4]) + b"\0\0\0\1" + (len(SIG) - 1).to_bytes(2, "big") + SIG
    )
    for raw in (too_big, too_small):
        with pytest.raises(imaguard.FormatError, match="signature bytes"):
            parse(raw)


def test_sig_size_zero_with_empty_signature_refused() -> None:
    # Exactly the 9-byte header: the kernel wants strictly more than 9 bytes.
    with pytest.raises(imaguard.FormatError, match="at least 10"):
        parse(b"\x03\x02\x04\x00\x00\x00\x01\x00\x00")


@pytest.mark.parametrize(
    ("algo", "length"),
    [
        ("sha256", 31),
        ("sha256", 33),
        ("sha256", 20),
        ("sha256", 0),
        ("sha512", 63),
        ("sha512", 32),
        ("sha1", 19),
        ("sha1", 21),
        ("md5", 20),
        ("sha384", 64),
        ("sha3-256", 64),
    ],
)
def test_digest_ng_wrong_digest_length(algo: str, length: int) -> None:
    a = by_name(algo)
    raw = bytes([0x04, a.id]) + b"\x5a" * length
    with pytest.raises(imaguard.FormatError, match=algo):
        parse(raw)


@pytest.mark.parametrize("length", [0, 1, 15, 17, 18, 19, 21, 32, 64])
def test_0x01_wrong_digest_length(length: int) -> None:
    with pytest.raises(imaguard.FormatError, match="0x01"):
        parse(b"\x01" + b"\x11" * length)


@pytest.mark.parametrize("length", [0, 1, 16, 19, 21, 32])
def test_0x02_wrong_hmac_length(length: int) -> None:
    with pytest.raises(imaguard.FormatError, match="21"):
        parse(b"\x02" + b"\x22" * length)


@pytest.mark.parametrize(
    "parser",
    [parse, DigestValue.parse, DigestNgValue.parse, HmacValue.parse, SignatureValue.parse],
)
def test_empty_input(parser: object) -> None:
    for empty in (b"", bytearray(), memoryview(b"")):
        with pytest.raises(imaguard.FormatError, match="empty"):
            parser(empty)  # type: ignore[operator]


@pytest.mark.parametrize(
    "parser",
    [parse, DigestValue.parse, DigestNgValue.parse, HmacValue.parse, SignatureValue.parse],
)
@pytest.mark.parametrize("bad", ["\x04\x04" + "a" * 32, None, 4, [4, 4], 3.0, object()])
def test_non_bytes_input(parser: object, bad: object) -> None:
    with pytest.raises(imaguard.FormatError, match="expected bytes"):
        parser(bad)  # type: ignore[operator]


# --- constructors validate too -------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 15, 17, 19, 21, 32])
def test_digest_value_constructor_refuses_bad_length(length: int) -> None:
    with pytest.raises(imaguard.FormatError):
        DigestValue(bytes(length))


def test_digest_value_only_md5_can_be_padded() -> None:
    with pytest.raises(imaguard.FormatError, match="padded"):
        DigestValue(D_SHA1, padded=True)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_digest_ng_constructor_refuses_bad_length(length: int) -> None:
    with pytest.raises(imaguard.FormatError, match="sha256"):
        DigestNgValue(SHA256, bytes(length))


@pytest.mark.parametrize("length", [0, 16, 19, 21, 32])
def test_hmac_constructor_refuses_bad_length(length: int) -> None:
    with pytest.raises(imaguard.FormatError, match="20"):
        HmacValue(bytes(length))


@pytest.mark.parametrize("key_id", [-1, 0x1_0000_0000, 2**64])
def test_signature_constructor_refuses_bad_key_id(key_id: int) -> None:
    with pytest.raises(imaguard.FormatError, match="key id"):
        SignatureValue(XattrType.EVM_IMA_XATTR_DIGSIG, SHA256, key_id, SIG)


@pytest.mark.parametrize("length", [0, 0x10000])
def test_signature_constructor_refuses_bad_signature_length(length: int) -> None:
    with pytest.raises(imaguard.FormatError, match="signature length"):
        SignatureValue(XattrType.EVM_IMA_XATTR_DIGSIG, SHA256, 1, bytes(length))


@pytest.mark.parametrize(
    "t", [XattrType.IMA_XATTR_DIGEST, XattrType.EVM_XATTR_HMAC, XattrType.IMA_XATTR_DIGEST_NG]
)
def test_signature_constructor_refuses_non_signature_type(t: XattrType) -> None:
    with pytest.raises(imaguard.FormatError, match="not a signature"):
        SignatureValue(t, SHA256, 1, SIG)


def test_values_are_frozen() -> None:
    v = parse(VALID["03-rsa-sha256"])
    assert isinstance(v, SignatureValue)
    with pytest.raises(AttributeError):
        v.key_id = 5  # type: ignore[misc]


# --- digest_value and file_id --------------------------------------------------------------------


def test_digest_value_sha1_is_0x01_layout() -> None:
    v = digest_value(SHA1, D_SHA1)
    assert isinstance(v, DigestValue)
    assert v.serialize() == b"\x01" + D_SHA1  # evmctl ima_hash -a sha1


def test_digest_value_md5_is_0x01_layout() -> None:
    v = digest_value(MD5, D_MD5)
    assert v.serialize() == b"\x01" + D_MD5
    assert parse(v.serialize()).algorithm is MD5  # type: ignore[union-attr]


def test_digest_value_sha256_is_0x04_layout() -> None:
    v = digest_value(SHA256, D_SHA256)
    assert isinstance(v, DigestNgValue)
    assert v.serialize() == b"\x04\x04" + D_SHA256  # evmctl ima_hash -a sha256


def test_digest_value_sha512_is_0x04_layout() -> None:
    v = digest_value(SHA512, D_SHA512)
    assert v.serialize() == b"\x04\x06" + D_SHA512  # evmctl ima_hash -a sha512


@pytest.mark.parametrize("algo", [a for a in ALGORITHMS if a.id > 2], ids=lambda a: a.name)
def test_digest_value_every_other_algorithm_is_0x04(algo: HashAlgo) -> None:
    d = bytes(range(algo.digest_size))
    assert digest_value(algo, d).serialize() == bytes([0x04, algo.id]) + d


def test_digest_value_md4_refused() -> None:
    # ima_fix_xattr and evmctl would write md4 as 0x01 (ids up to sha1), but a 16-byte 0x01
    # value is md5 when read back (ima_get_hash_algo): the error says why.
    with pytest.raises(imaguard.FormatError, match=r"md4.*reads back as md5"):
        digest_value(by_name("md4"), bytes(16))
    assert parse(b"\x01" + bytes(16)).algorithm is MD5  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("algo", "length"), [("sha1", 16), ("md5", 20), ("sha1", 19), ("sha256", 20), ("md5", 0)]
)
def test_digest_value_refuses_a_digest_of_another_length(algo: str, length: int) -> None:
    # A 16-byte "sha1" digest must not silently become an md5 value (and vice versa).
    with pytest.raises(imaguard.FormatError):
        digest_value(by_name(algo), b"\x42" * length)


def test_file_id_layout() -> None:
    assert file_id(SHA256, D_SHA256) == b"\x06\x04" + D_SHA256
    assert file_id(SHA512, D_SHA512, hash_type=0x03) == b"\x03\x06" + D_SHA512


def test_file_id_wrong_length() -> None:
    with pytest.raises(imaguard.FormatError):
        file_id(SHA256, D_SHA1)


# --- Hypothesis properties -----------------------------------------------------------------------

algorithms = st.sampled_from(ALGORITHMS)
sig_types = st.sampled_from(
    [
        XattrType.EVM_IMA_XATTR_DIGSIG,
        XattrType.EVM_XATTR_PORTABLE_DIGSIG,
        XattrType.IMA_VERITY_DIGSIG,
    ]
)


@st.composite
def digest_ng_values(draw: st.DrawFn) -> DigestNgValue:
    algo = draw(algorithms)
    d = draw(st.binary(min_size=algo.digest_size, max_size=algo.digest_size))
    return DigestNgValue(algo, d)


@st.composite
def signature_values(draw: st.DrawFn) -> SignatureValue:
    return SignatureValue(
        draw(sig_types),
        draw(algorithms),
        draw(st.integers(0, 0xFFFFFFFF)),
        draw(st.binary(min_size=1, max_size=600)),
    )


sha1_digests = st.binary(min_size=20, max_size=20).filter(lambda d: d[16:] != bytes(4))
digest_values = st.one_of(
    sha1_digests.map(DigestValue),
    st.binary(min_size=16, max_size=16).map(DigestValue),
    st.binary(min_size=16, max_size=16).map(lambda d: DigestValue(d, padded=True)),
)
hmac_values = st.binary(min_size=20, max_size=20).map(HmacValue)
all_values = st.one_of(digest_values, hmac_values, digest_ng_values(), signature_values())


@PROPS
@given(all_values)
def test_property_value_round_trip(value: imaguard.formats.ImaValue) -> None:
    raw = value.serialize()
    again = parse(raw)
    assert again == value
    assert type(again).parse(raw) == value
    assert again.serialize() == raw


@PROPS
@given(signature_values())
def test_property_signature_header_layout(value: SignatureValue) -> None:
    raw = value.serialize()
    assert raw[0] == value.type
    assert raw[1] == (3 if value.type == 0x06 else 2)
    assert raw[2] == value.algorithm.id
    assert int.from_bytes(raw[3:7], "big") == value.key_id
    assert int.from_bytes(raw[7:9], "big") == len(value.signature) == len(raw) - 9
    assert raw[9:] == value.signature


@PROPS
@given(all_values, st.data())
def test_property_every_prefix_is_refused(
    value: imaguard.formats.ImaValue, data: st.DataObject
) -> None:
    raw = value.serialize()
    n = data.draw(st.integers(0, len(raw) - 1))
    if raw[0] == 0x01 and len(raw) == 21 and n == 17:
        return  # a valid md5 value (ima_get_hash_algo)
    with pytest.raises(imaguard.FormatError):
        parse(raw[:n])


@PROPS
@given(st.binary(min_size=20, max_size=20))
def test_property_0x01_twenty_bytes_follow_kernel_rule(body: bytes) -> None:
    v = parse(b"\x01" + body)
    assert isinstance(v, DigestValue)
    if body[16:] == bytes(4):
        assert v.algorithm is MD5
        assert v.padded
        assert v.digest == body[:16]
    else:
        assert v.algorithm is SHA1
        assert v.digest == body
    assert v.serialize() == b"\x01" + body


def _check_arbitrary(raw: bytes) -> None:
    try:
        v = parse(raw)
    except imaguard.FormatError:
        return
    assert v.serialize() == raw


@st.composite
def near_valid_bytes(draw: st.DrawFn) -> bytes:
    """Byte strings with plausible headers, so the parser's deeper checks get exercised."""
    type_byte = draw(st.integers(0, 8) | st.just(0xFF))
    version = draw(st.integers(0, 4))
    algo_id = draw(st.integers(0, 25))
    key_id = draw(st.binary(min_size=4, max_size=4))
    body = draw(st.binary(max_size=80))
    size = draw(st.sampled_from([len(body), len(body) + 1, max(len(body) - 1, 0)]))
    shape = draw(st.integers(0, 2))
    if shape == 0:
        raw = bytes([type_byte, version, algo_id]) + key_id + size.to_bytes(2, "big") + body
    elif shape == 1:
        n = draw(st.sampled_from([a.digest_size for a in ALGORITHMS] + [0, 1, 65]))
        raw = bytes([type_byte, algo_id]) + draw(st.binary(min_size=n, max_size=n))
    else:
        n = draw(st.sampled_from([15, 16, 19, 20, 21]))
        raw = bytes([type_byte]) + draw(st.binary(min_size=n, max_size=n))
    cut = draw(st.integers(0, len(raw)))
    return raw[:cut] if draw(st.booleans()) else raw


@PROPS
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_parse_or_format_error(raw: bytes) -> None:
    _check_arbitrary(raw)


@settings(database=None, deadline=None, max_examples=500)
@given(near_valid_bytes())
def test_property_near_valid_bytes_parse_or_format_error(raw: bytes) -> None:
    _check_arbitrary(raw)


# --- is_signature: the one "is a signature" test ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\x03\x02\x04" + bytes(7), True),
        (b"\x06\x03\x04" + bytes(7), True),
        (b"\x03", True),  # by type byte alone, as the kernel's sig field
        (b"\x05\x02\x04" + bytes(7), False),  # portable EVM: not an IMA file signature
        (b"\x04\x04" + bytes(32), False),
        (b"\x01" + bytes(20), False),
        (b"\x02" + bytes(20), False),
        (b"", False),
        (None, False),
    ],
)
def test_is_signature(value: bytes | None, expected: bool) -> None:
    assert is_signature(value) is expected


def test_no_other_module_tests_signature_type_bytes_itself() -> None:
    import pathlib

    import imaguard as pkg

    src = pathlib.Path(pkg.__file__).parent
    needles = ('in (b"\\x03", b"\\x06")', "in (0x03, 0x05, 0x06)", 'in (b"\\x03", b"\\x05"')
    hits = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if p.parent.name != "cli" and any(n in p.read_text() for n in needles)
    ]
    assert hits == []
