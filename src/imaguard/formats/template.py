"""IMA templates: descriptors, field encodings, template data and template digests.

The kernel's security/integrity/ima/ima_template.c, ima_template_lib.c and
``ima_calc_field_array_hash()`` in ima_crypto.c; Documentation/security/IMA-templates.rst.

A template is a list of field ids; an entry's *template data* is, for each field, a
little-endian ``u32`` length and the field's bytes (the kernel's canonical format on x86).
The template named exactly ``ima`` is special: its template digest is
``SHA1(d[20] || name zero-padded to 256 bytes)``.

Field bytes are what the kernel stores, so digests computed here equal the kernel's:
string fields end in NUL, spaces in names are stored as ``_``, ``d-ng`` is
``"<algo>:" NUL digest`` even for sha1.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from imaguard.errors import FormatError
from imaguard.formats.hashalgo import HashAlgo, by_name

__all__ = [
    "FIELD_IDS",
    "MAX_NAME_LEN",
    "TEMPLATES",
    "TemplateDescriptor",
    "TemplateEntry",
    "decode_digest_field",
    "encode_digest_ng",
    "encode_digest_ngv2",
    "encode_name",
    "render_field",
    "unrender_field",
]

TEMPLATES: dict[str, tuple[str, ...]] = {
    "ima": ("d", "n"),
    "ima-ng": ("d-ng", "n-ng"),
    "ima-ngv2": ("d-ngv2", "n-ng"),
    "ima-sig": ("d-ng", "n-ng", "sig"),
    "ima-sigv2": ("d-ngv2", "n-ng", "sig"),
    "ima-buf": ("d-ng", "n-ng", "buf"),
    "ima-modsig": ("d-ng", "n-ng", "sig", "d-modsig", "modsig"),
    "evm-sig": (
        "d-ng",
        "n-ng",
        "evmsig",
        "xattrnames",
        "xattrlengths",
        "xattrvalues",
        "iuid",
        "igid",
        "imode",
    ),
}

FIELD_IDS = (
    "d",
    "n",
    "d-ng",
    "d-ngv2",
    "n-ng",
    "sig",
    "buf",
    "d-modsig",
    "modsig",
    "evmsig",
    "xattrnames",
    "xattrlengths",
    "xattrvalues",
    "iuid",
    "igid",
    "imode",
)

MAX_FIELDS = 15
MAX_FIELD_ID = 16
MAX_TEMPLATE_NAME = 255
"""TCG_EVENT_NAME_LEN_MAX: the longest template name a list may carry."""
MAX_NAME_LEN = 4096
"""PATH_MAX: imaguard refuses event names longer than any path the kernel can produce."""
IMA_NAME_PAD = 256
"""The ``ima`` template hashes its name zero-padded to this size."""

_HEX_FIELDS = {"d", "sig", "buf", "modsig", "evmsig", "xattrlengths", "xattrvalues"}
_STRING_FIELDS = {"n", "n-ng", "xattrnames"}
_DIGEST_FIELDS = {"d-ng", "d-ngv2", "d-modsig"}
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class TemplateDescriptor:
    """A template: its name and field ids. A custom template is named by its format string."""

    name: str
    fields: tuple[str, ...]

    @classmethod
    def lookup(cls, name_or_fmt: str) -> TemplateDescriptor:
        """A built-in template by name, or a custom one named by its ``f1|f2|...`` format."""
        if name_or_fmt in TEMPLATES:
            return cls(name_or_fmt, TEMPLATES[name_or_fmt])
        fields = tuple(name_or_fmt.split("|"))
        if len(name_or_fmt) > MAX_TEMPLATE_NAME:
            raise FormatError(f"template name of {len(name_or_fmt)} bytes (at most 255)")
        if len(fields) > MAX_FIELDS or not all(
            f in FIELD_IDS and len(f) <= MAX_FIELD_ID for f in fields
        ):
            known = ", ".join(TEMPLATES)
            raise FormatError(
                f"unknown template {name_or_fmt!r} (built-ins: {known}; or a format string of "
                f"at most {MAX_FIELDS} field ids from {', '.join(FIELD_IDS)})"
            )
        # A custom template is named by its format string, even when the fields equal a
        # built-in's (ima_fs.c shows the format string as the name; ima_crypto.c compares
        # the name): only the template named exactly "ima" is special.
        return cls(name_or_fmt, fields)

    @property
    def is_ima(self) -> bool:
        return self.name == "ima"


def encode_name(name: str | bytes, field_id: str = "n-ng") -> bytes:
    """A name as the kernel stores it: spaces as ``_``, a trailing NUL (``n``: at most 255)."""
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise FormatError("event name contains a NUL byte")
    if len(raw) > MAX_NAME_LEN:
        raise FormatError(
            f"event name of {len(raw)} bytes is longer than the kernel allows ({MAX_NAME_LEN})"
        )
    raw = raw.replace(b" ", b"_")
    if field_id == "n" and len(raw) > IMA_NAME_PAD - 1:
        # With no file at hand the kernel truncates (with one, it uses the last path
        # component: see imaguard.measure._entries).
        raw = raw[: IMA_NAME_PAD - 1]
    return raw + b"\0"


def encode_digest_ng(algorithm: HashAlgo | str, digest: bytes) -> bytes:
    algo = by_name(algorithm) if isinstance(algorithm, str) else algorithm
    if len(digest) != algo.digest_size:
        raise FormatError(f"{algo.name} digest must be {algo.digest_size} bytes, got {len(digest)}")
    return algo.name.encode() + b":\0" + digest


def encode_digest_ngv2(kind: str, algorithm: HashAlgo | str, digest: bytes) -> bytes:
    if kind not in ("ima", "verity"):
        raise FormatError(f"d-ngv2 digest type must be 'ima' or 'verity', not {kind!r}")
    algo = by_name(algorithm) if isinstance(algorithm, str) else algorithm
    if len(digest) != algo.digest_size:
        raise FormatError(f"{algo.name} digest must be {algo.digest_size} bytes, got {len(digest)}")
    return f"{kind}:{algo.name}:".encode() + b"\0" + digest


def decode_digest_field(data: bytes, field_id: str = "d-ng") -> tuple[str | None, HashAlgo, bytes]:
    """``(kind, algorithm, digest)`` of a d-ng / d-ngv2 / d-modsig field (kind only for d-ngv2)."""
    sep = data.find(b"\0")
    if sep < 0:
        raise FormatError(f"{field_id} field has no NUL after its algorithm prefix")
    prefix = data[:sep]
    if not prefix.endswith(b":"):
        raise FormatError(f"{field_id} field prefix {prefix!r} does not end in ':'")
    parts = prefix[:-1].decode("ascii", "replace").split(":")
    kind: str | None = None
    if field_id == "d-ngv2":
        if len(parts) != 2 or parts[0] not in ("ima", "verity"):
            raise FormatError(f"d-ngv2 field prefix {prefix!r} is not '<ima|verity>:<algo>:'")
        kind = parts[0]
        algo_name = parts[1]
    else:
        if len(parts) != 1:
            raise FormatError(f"{field_id} field prefix {prefix!r} is not '<algo>:'")
        algo_name = parts[0]
    algo = by_name(algo_name)
    digest = data[sep + 1 :]
    if len(digest) != algo.digest_size:
        raise FormatError(f"{field_id} field: {algo.name} digest of {len(digest)} bytes")
    return kind, algo, digest


def render_field(field_id: str, data: bytes) -> bytes:
    """The field as ``ascii_runtime_measurements`` shows it (bytes: names are raw)."""
    if not data:
        return b""
    if field_id in _STRING_FIELDS:
        return data[:-1] if data.endswith(b"\0") else data
    if field_id in _DIGEST_FIELDS:
        sep = data.find(b"\0")
        if sep < 0:
            raise FormatError(f"{field_id} field has no NUL after its algorithm prefix")
        return data[:sep] + data[sep + 1 :].hex().encode()
    if field_id in ("iuid", "igid"):
        if len(data) != 4:
            raise FormatError(f"{field_id} field of {len(data)} bytes (expected 4)")
        return str(_U32.unpack(data)[0]).encode()
    if field_id == "imode":
        if len(data) != 2:
            raise FormatError(f"imode field of {len(data)} bytes (expected 2)")
        return str(struct.unpack("<H", data)[0]).encode()
    return data.hex().encode()


def unrender_field(field_id: str, text: bytes) -> bytes:
    """Inverse of :func:`render_field`: the stored bytes from the ASCII rendering."""
    if field_id in ("n", "n-ng"):
        return text + b"\0"  # the kernel stores even an empty name with its NUL
    if not text:
        return b""
    try:
        if field_id in _STRING_FIELDS:
            return text + b"\0"
        if field_id in _DIGEST_FIELDS:
            colon = text.rfind(b":")
            if colon < 0:
                raise FormatError(f"{field_id} value {text[:40]!r} has no ':'")
            if b"\0" in text:
                # The stored field ends its prefix at the first NUL: one inside the text
                # would move that end (and the kernel writes none).
                raise FormatError(f"{field_id} value {text[:40]!r} contains a NUL byte")
            return text[: colon + 1] + b"\0" + bytes.fromhex(text[colon + 1 :].decode("ascii"))
        if field_id in ("iuid", "igid"):
            return _U32.pack(int(text))
        if field_id == "imode":
            return struct.pack("<H", int(text))
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise FormatError(f"{field_id} value {text[:40]!r} is malformed ({e})") from None


@dataclass(frozen=True)
class TemplateEntry:
    """One measurement-list entry: PCR, template, and each field's stored bytes.

    ``violation`` marks the kernel's ToMToU/open-writers records: their template digest
    is stored as zeros in every bank and the PCR is extended with 0xFF bytes.
    """

    pcr: int
    template: TemplateDescriptor
    fields: tuple[bytes, ...]
    violation: bool = False

    def __post_init__(self) -> None:
        if len(self.fields) != len(self.template.fields):
            raise FormatError(
                f"template {self.template.name} has {len(self.template.fields)} fields, "
                f"entry has {len(self.fields)}"
            )
        if not 0 <= self.pcr < 1 << 32:
            raise FormatError(f"PCR index {self.pcr} out of range")

    def field(self, field_id: str) -> bytes | None:
        for fid, data in zip(self.template.fields, self.fields, strict=True):
            if fid == field_id:
                return data
        return None

    @property
    def name(self) -> bytes:
        """The event name (path) as stored, without the NUL."""
        for fid in ("n-ng", "n"):
            data = self.field(fid)
            if data is not None:
                return data[:-1] if data.endswith(b"\0") else data
        return b""

    def template_data(self) -> bytes:
        """What template digests hash: ``u32 len || bytes`` per field (``ima``: see module doc)."""
        if self.template.is_ima:
            d, n = self.fields
            name = n[:-1] if n.endswith(b"\0") else n
            return d + name[: IMA_NAME_PAD - 1].ljust(IMA_NAME_PAD, b"\0")
        return b"".join(_U32.pack(len(f)) + f for f in self.fields)

    def template_digest(self, bank: str = "sha1") -> bytes:
        """The template digest for a PCR bank (zeros for a violation)."""
        size = hashlib.new(bank).digest_size
        if self.violation:
            return b"\0" * size
        return hashlib.new(bank, self.template_data()).digest()

    def template_digests(self, banks: Iterable[str]) -> dict[str, bytes]:
        """Template digests for several banks, building the template data once."""
        banks = tuple(dict.fromkeys(banks))
        if self.violation:
            return {b: b"\0" * hashlib.new(b).digest_size for b in banks}
        data = self.template_data()
        return {b: hashlib.new(b, data).digest() for b in banks}

    def extend_values(self, banks: Iterable[str]) -> dict[str, bytes]:
        """What each bank's PCR is extended with (0xFF.. for a violation)."""
        if self.violation:
            return {b: b"\xff" * hashlib.new(b).digest_size for b in dict.fromkeys(banks)}
        return self.template_digests(banks)

    def extend_value(self, bank: str = "sha1") -> bytes:
        """What the PCR is extended with: the template digest, or 0xFF.. for a violation."""
        if self.violation:
            return b"\xff" * hashlib.new(bank).digest_size
        return self.template_digest(bank)
