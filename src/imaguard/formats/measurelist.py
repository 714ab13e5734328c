"""Measurement lists: ``binary_runtime_measurements`` and ``ascii_runtime_measurements``.

As the kernel writes them (security/integrity/ima/ima_fs.c, ``ima_measurements_show()``
and ``ima_ascii_measurements_show()``). One file per PCR bank: the template-digest column has
that bank's digest size. Integers are little-endian (the kernel's canonical format, and
native on x86).

Binary record::

    u32 pcr | digest[bank size] | u32 name_len | name | u32 data_len | data
    (template "ima": no data_len; data = d[20] | u32 strlen(n) | n without NUL)

ASCII line::

    "%2d " pcr | hex(digest) | " " name | (" " rendering) per field | "\\n"

:func:`parse_binary` / :func:`serialize_binary` and :func:`parse_ascii` /
:func:`serialize_ascii` are exact inverses on well-formed input; every malformed,
truncated or oversized record raises :class:`~imaguard.FormatError` naming its index
and byte offset. :func:`iter_binary` is the fast path used by verification: it yields
raw records without decoding fields.
"""

from __future__ import annotations

import binascii
import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

from imaguard.errors import FormatError, TruncatedError
from imaguard.formats.template import (
    MAX_NAME_LEN,
    MAX_TEMPLATE_NAME,
    TemplateDescriptor,
    TemplateEntry,
    render_field,
    unrender_field,
)

__all__ = [
    "MAX_TEMPLATE_DATA",
    "LogRecord",
    "RawRecord",
    "detect",
    "iter_ascii",
    "iter_binary",
    "parse_ascii",
    "parse_binary",
    "serialize_ascii",
    "serialize_binary",
    "serialize_record",
    "split_fields",
]

MAX_TEMPLATE_DATA = 1 << 24
"""Largest template data accepted for one record (16 MiB); larger is a corrupt length."""
MAX_PCR = 24

_U32 = struct.Struct("<I")


class RawRecord(NamedTuple):
    """A record as stored: template data undecoded (what hashing and replay need).

    ``name`` and ``file_digest`` are filled by the ASCII reader for templates whose
    first two fields are a digest and a name (they are right there in the text); other
    readers leave them None and verification decodes the fields when it needs them.
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose: the record's position
    offset: int
    pcr: int
    digest: bytes
    template_name: str
    template_data: bytes
    """The bytes template digests are computed over (see TemplateEntry.template_data)."""
    name: bytes | None = None
    file_digest: tuple[str, bytes] | None = None
    sig: bytes | None = None

    @property
    def violation(self) -> bool:
        return not any(self.digest)


@dataclass(frozen=True)
class LogRecord:
    """A decoded record: the entry and the template digest stored with it."""

    entry: TemplateEntry
    digest: bytes


_descriptors: dict[str, TemplateDescriptor] = {}


def _descriptor(name: str, where: str) -> TemplateDescriptor:
    desc = _descriptors.get(name)
    if desc is None:
        try:
            desc = TemplateDescriptor.lookup(name)
        except FormatError as e:
            raise FormatError(f"{where}: {e}") from None
        _descriptors[name] = desc
    return desc


def split_fields(data: bytes, count: int, where: str = "template data") -> tuple[bytes, ...]:
    """Split ``u32 len || bytes`` fields; FormatError unless exactly ``count`` fill ``data``."""
    out = []
    pos = 0
    end = len(data)
    for i in range(count):
        if pos + 4 > end:
            raise FormatError(f"{where}: truncated before the length of field {i + 1} of {count}")
        (n,) = _U32.unpack_from(data, pos)
        pos += 4
        if n > end - pos:
            raise FormatError(f"{where}: field {i + 1} claims {n} bytes, {end - pos} remain")
        out.append(bytes(data[pos : pos + n]))
        pos += n
    if pos != end:
        raise FormatError(f"{where}: {end - pos} bytes after the last field")
    return tuple(out)


def iter_binary(data: bytes | memoryview, bank: str = "sha1") -> Iterator[RawRecord]:
    """Yield raw records of a binary list for ``bank``; FormatError on the first bad one.

    A record the data ends inside raises :class:`~imaguard.errors.TruncatedError` (a
    FormatError): the cut-short tail a crash leaves, which a log store may truncate.
    """
    size = hashlib.new(bank).digest_size
    mv = memoryview(data)
    end = len(mv)
    pos = 0
    index = 0
    unpack = _U32.unpack_from
    while pos < end:
        start = pos
        where = f"record {index} at byte {start}"
        if end - pos < 4 + size + 4:
            raise TruncatedError(f"{where}: truncated ({end - pos} bytes left)")
        (pcr,) = unpack(mv, pos)
        if pcr >= MAX_PCR:
            raise FormatError(f"{where}: PCR index {pcr} (at most {MAX_PCR - 1})")
        pos += 4
        digest = bytes(mv[pos : pos + size])
        pos += size
        (name_len,) = unpack(mv, pos)
        pos += 4
        if name_len == 0 or name_len > MAX_TEMPLATE_NAME:
            raise FormatError(f"{where}: template name length {name_len} (1-{MAX_TEMPLATE_NAME})")
        if end - pos < name_len:
            raise TruncatedError(f"{where}: truncated in the template name")
        try:
            tname = bytes(mv[pos : pos + name_len]).decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"{where}: template name is not ASCII") from None
        pos += name_len
        if tname == "ima":
            if end - pos < 24:
                raise TruncatedError(f"{where}: truncated in the ima template data")
            d = bytes(mv[pos : pos + 20])
            (n_len,) = unpack(mv, pos + 20)
            pos += 24
            if n_len > 255:
                raise FormatError(f"{where}: ima name length {n_len} is bad (at most 255)")
            if end - pos < n_len:
                raise TruncatedError(f"{where}: truncated in the ima name ({n_len} claimed)")
            name = bytes(mv[pos : pos + n_len])
            if b"\0" in name:  # the kernel writes strlen(n) bytes: never a NUL
                raise FormatError(f"{where}: ima name contains a NUL byte")
            pos += n_len
            td = d + name.ljust(256, b"\0")
        else:
            if end - pos < 4:
                raise TruncatedError(f"{where}: truncated before the template data length")
            (td_len,) = unpack(mv, pos)
            pos += 4
            if td_len > MAX_TEMPLATE_DATA:
                raise FormatError(f"{where}: template data length {td_len} is oversized")
            if end - pos < td_len:
                raise TruncatedError(
                    f"{where}: truncated in the template data ({td_len} claimed, {end - pos} left)"
                )
            td = bytes(mv[pos : pos + td_len])
            pos += td_len
        yield _with_fields(RawRecord(index, start, pcr, digest, tname, td))
        index += 1


def _with_fields(rec: RawRecord) -> RawRecord:
    """For ima-ng / ima-sig / ima-buf, split out the name, file digest and third field."""
    nfields = _FAST_ASCII.get(rec.template_name)
    if nfields is None:
        return rec
    td = rec.template_data
    try:
        fields = split_fields(td, nfields)
    except FormatError:
        return rec  # judged later, where the error is reported with its index
    dng, name = fields[0], fields[1]
    sep = dng.find(b"\0")
    if sep < 1 or dng[sep - 1 : sep] != b":":
        return rec
    algo = dng[: sep - 1].decode("ascii", "replace")
    third = fields[2] if nfields == 3 else None
    return rec._replace(
        name=name[:-1] if name.endswith(b"\0") else name,
        file_digest=(algo, dng[sep + 1 :]),
        sig=third,
    )


def _entry_from_raw(raw: RawRecord) -> TemplateEntry:
    where = f"record {raw.index} at byte {raw.offset}"
    desc = _descriptor(raw.template_name, where)
    violation = not any(raw.digest)
    if desc.is_ima:
        d = raw.template_data[:20]
        name = raw.template_data[20:].rstrip(b"\0")
        return TemplateEntry(raw.pcr, desc, (d, name + b"\0"), violation)
    fields = split_fields(raw.template_data, len(desc.fields), where)
    for fid, data in zip(desc.fields, fields, strict=True):
        if fid in ("n-ng", "n") and len(data) > MAX_NAME_LEN + 1:
            raise FormatError(
                f"{where}: event name of {len(data) - 1} bytes is longer than "
                f"the kernel allows ({MAX_NAME_LEN})"
            )
    return TemplateEntry(raw.pcr, desc, fields, violation)


def parse_binary(data: bytes, bank: str = "sha1") -> list[LogRecord]:
    """Decode a whole binary list."""
    return [LogRecord(_entry_from_raw(r), r.digest) for r in iter_binary(data, bank)]


def serialize_record(e: TemplateEntry, digest: bytes) -> bytes:
    """One binary record, with its template digest (for the file's bank) already computed."""
    name = e.template.name.encode("ascii")
    head = _U32.pack(e.pcr) + digest + _U32.pack(len(name)) + name
    if e.template.is_ima:
        d, n = e.fields
        raw_name = n[:-1] if n.endswith(b"\0") else n
        return head + d + _U32.pack(len(raw_name)) + raw_name
    td = e.template_data()
    return head + _U32.pack(len(td)) + td


def serialize_binary(entries: Iterable[TemplateEntry], bank: str = "sha1") -> bytes:
    """The binary list for ``bank``, template digests computed for that bank."""
    return b"".join(serialize_record(e, e.template_digest(bank)) for e in entries)


def serialize_ascii(entries: Iterable[TemplateEntry], bank: str = "sha1") -> bytes:
    """The ASCII list for ``bank`` (bytes: event names are written raw, as the kernel does)."""
    lines = []
    for e in entries:
        parts = [b"%2d " % e.pcr + e.template_digest(bank).hex().encode(), e.template.name.encode()]
        parts += [
            render_field(fid, data) for fid, data in zip(e.template.fields, e.fields, strict=True)
        ]
        lines.append(b" ".join(parts) + b"\n")
    return b"".join(lines)


def parse_ascii(text: bytes | str, bank: str = "sha1") -> list[LogRecord]:
    """Decode an ASCII list; the template data is rebuilt from each field's rendering."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    size = hashlib.new(bank).digest_size
    records = []
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line:
            continue
        where = f"line {number}"
        parts = line.lstrip(b" ").split(b" ")
        if len(parts) < 3:
            raise FormatError(f"{where}: fewer than 3 columns")
        try:
            pcr = int(parts[0])
            digest = bytes.fromhex(parts[1].decode("ascii"))
            tname = parts[2].decode("ascii")
        except (ValueError, UnicodeDecodeError) as e:
            raise FormatError(f"{where}: malformed PCR, digest or template column ({e})") from None
        if len(digest) != size:
            raise FormatError(
                f"{where}: template digest of {len(digest)} bytes; the {bank} bank has {size}"
            )
        if not 0 <= pcr < MAX_PCR:
            raise FormatError(f"{where}: PCR index {pcr}")
        desc = _descriptor(tname, where)
        rendered = parts[3:]
        if len(rendered) != len(desc.fields):
            raise FormatError(
                f"{where}: template {tname} has {len(desc.fields)} fields, the line "
                f"has {len(rendered)} (an unsigned ima-sig line ends in a space)"
            )
        fields = tuple(
            unrender_field(fid, value) for fid, value in zip(desc.fields, rendered, strict=True)
        )
        if desc.is_ima:
            fields = (fields[0], fields[1])
        records.append(LogRecord(TemplateEntry(pcr, desc, fields, not any(digest)), digest))
    return records


_FAST_ASCII = {"ima-ng": 2, "ima-sig": 3, "ima-buf": 3}


def iter_ascii(text: bytes, bank: str = "sha1") -> Iterator[RawRecord]:
    """Yield raw records of an ASCII list; FormatError on the first bad line.

    ima-ng / ima-sig / ima-buf lines are rebuilt directly from the text (the common case,
    fast); every other template goes through :func:`parse_ascii`.
    """
    size = hashlib.new(bank).digest_size
    pack = _U32.pack
    unhex = binascii.unhexlify
    fast = {name.encode(): (name, n) for name, n in _FAST_ASCII.items()}
    pcrs = {str(i).encode(): i for i in range(MAX_PCR)}
    index = 0
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line:
            continue
        parts = line.lstrip(b" ").split(b" ")
        kind = fast.get(parts[2]) if len(parts) > 2 else None
        if kind is None or len(parts) != 3 + kind[1]:
            try:
                (rec,) = parse_ascii(line, bank)
            except FormatError as e:
                raise FormatError(str(e).replace("line 1", f"line {number}", 1)) from None
            ent = rec.entry
            yield RawRecord(
                index, number, ent.pcr, rec.digest, ent.template.name, ent.template_data()
            )
            index += 1
            continue
        tname, nfields = kind
        pcr = pcrs.get(parts[0])
        dng = parts[3]
        colon = dng.find(b":")
        try:
            if pcr is None:
                raise ValueError(f"PCR index {parts[0][:10]!r}")
            digest = unhex(parts[1])
            if colon < 0:
                raise ValueError("d-ng field without ':'")
            file_digest = unhex(dng[colon + 1 :])
            algo = dng[:colon].decode("ascii")
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise FormatError(f"line {number}: malformed column ({exc})") from None
        if len(digest) != size:
            raise FormatError(
                f"line {number}: template digest of {len(digest)} bytes; the {bank} bank has {size}"
            )
        f1 = dng[: colon + 1] + b"\0" + file_digest
        name = parts[4]
        td = pack(len(f1)) + f1 + pack(len(name) + 1) + name + b"\0"
        sig = None
        if nfields == 3:
            try:
                sig = unhex(parts[5])
            except (ValueError, binascii.Error) as exc:
                raise FormatError(f"line {number}: malformed third field ({exc})") from None
            td += pack(len(sig)) + sig
        yield RawRecord(index, number, pcr, digest, tname, td, name, (algo, file_digest), sig)
        index += 1


def detect(data: bytes) -> Literal["binary", "ascii"]:
    """Which of the two list formats DATA is: a binary list starts with a little-endian PCR
    index below 24; an ASCII line starts with the PCR in decimal ("10 ..."), whose bytes read
    as a far larger number. An empty input is an empty binary list."""
    if len(data) < 4 or _U32.unpack_from(data)[0] < MAX_PCR:
        return "binary"
    return "ascii"
