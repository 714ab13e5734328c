"""imaguard digest lists (docs/digestlists.md): a signed, sorted list of file content digests.

Layout, version 1 (integers big-endian)::

    offset  size  field
    0       8     magic            b"IGDLIST\\0"
    8       2     version          1
    10      2     algorithm        the kernel's hash_algo id (sha256 = 4), hashalgo.py
    12      4     flags            bit 0: a path follows each digest
    16      8     count            number of digests
    24      8     created          seconds since the epoch
    32      2     source length    S (<= 4096)
    34      S     source           UTF-8: where the list came from ("dpkg:coreutils 9.1-1")
    34+S    pad   zero bytes to a multiple of 8
    ...     N*D   digests          sorted ascending, no duplicates (D = digest size)
    ...           paths            if flag 0: per digest, u16 length + UTF-8 path
                                   (surrogateescape), in digest order

A signature, when the list is signed, is **appended** as::

    value (a security.ima v2 signature, type 0x03, over the whole list above)
    u32 value length
    b"~imaguard digest list signature~\\n"

or kept **detached** in ``LIST.sig`` (the same value). The value is what ``imaguard sign``
writes into ``security.ima`` for a file with the list's bytes: any imaguard or evmctl key
verifies it. :func:`parse` refuses unsorted or duplicate digests, a truncated or padded
body, an unknown algorithm or flag, and a newer version, each with one FormatError.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from imaguard.errors import FormatError, TruncatedError
from imaguard.formats.hashalgo import HashAlgo, by_id, by_name

__all__ = [
    "FLAG_PATHS",
    "MAGIC",
    "SIGNATURE_MAGIC",
    "VERSION",
    "DigestList",
    "append_signature",
    "parse",
    "serialize",
    "split_signature",
]

MAGIC = b"IGDLIST\0"
VERSION = 1
FLAG_PATHS = 0x1
SIGNATURE_MAGIC = b"~imaguard digest list signature~\n"
_HEADER = struct.Struct(">8sHHIQQH")  # magic, version, algo, flags, count, created, srclen
MAX_SOURCE = 4096
MAX_SIGNATURE = 8192


@dataclass(frozen=True)
class DigestList:
    """A digest list: algorithm, sorted unique digests, optional paths, where it came from."""

    algorithm: HashAlgo
    digests: tuple[bytes, ...]
    created: int = 0
    source: str = ""
    paths: tuple[str, ...] | None = None
    signature: bytes | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        size = self.algorithm.digest_size
        for i, d in enumerate(self.digests):
            if len(d) != size:
                raise FormatError(
                    f"digest {i} is {len(d)} bytes; {self.algorithm.name} digests are {size}"
                )
            if i and self.digests[i - 1] >= d:
                raise FormatError(
                    f"digest {i} is {'a duplicate' if self.digests[i - 1] == d else 'out of order'}"
                    " (a list's digests are sorted and unique)"
                )
        if self.paths is not None and len(self.paths) != len(self.digests):
            raise FormatError(f"{len(self.paths)} paths for {len(self.digests)} digests")
        if len(self.source.encode()) > MAX_SOURCE:
            raise FormatError(f"source is longer than {MAX_SOURCE} bytes")

    @classmethod
    def build(
        cls,
        algorithm: str | HashAlgo,
        entries: Mapping[bytes, str | None] | Sequence[tuple[bytes, str | None]],
        *,
        created: int = 0,
        source: str = "",
        with_paths: bool = True,
    ) -> DigestList:
        """A list from (digest, path) entries in any order; duplicates keep the first path."""
        algo = algorithm if isinstance(algorithm, HashAlgo) else by_name(algorithm)
        items = entries.items() if isinstance(entries, Mapping) else entries
        merged: dict[bytes, str | None] = {}
        for digest, path in items:
            merged.setdefault(bytes(digest), path)
        keys = sorted(merged)
        paths = tuple(merged[k] or "" for k in keys) if with_paths else None
        return cls(algo, tuple(keys), created, source, paths)

    def __len__(self) -> int:
        return len(self.digests)

    def __contains__(self, digest: object) -> bool:
        import bisect

        if not isinstance(digest, bytes):
            return False
        i = bisect.bisect_left(self.digests, digest)
        return i < len(self.digests) and self.digests[i] == digest


def serialize(dl: DigestList) -> bytes:
    """The list's bytes (without a signature: :func:`append_signature` adds one)."""
    src = dl.source.encode()
    flags = FLAG_PATHS if dl.paths is not None else 0
    head = _HEADER.pack(
        MAGIC, VERSION, dl.algorithm.id, flags, len(dl.digests), dl.created, len(src)
    )
    out = bytearray(head + src)
    out += b"\0" * (-len(out) % 8)
    out += b"".join(dl.digests)
    if dl.paths is not None:
        for p in dl.paths:
            raw = p.encode("utf-8", "surrogateescape")
            if len(raw) > 0xFFFF:
                raise FormatError(f"path longer than 65535 bytes: {p[:60]}...")
            out += struct.pack(">H", len(raw)) + raw
    return bytes(out)


def append_signature(body: bytes, value: bytes) -> bytes:
    """``body`` with ``value`` (a security.ima signature over it) appended."""
    if not value or len(value) > MAX_SIGNATURE:
        raise FormatError(f"a signature value is 1..{MAX_SIGNATURE} bytes")
    return body + value + struct.pack(">I", len(value)) + SIGNATURE_MAGIC


def split_signature(data: bytes) -> tuple[bytes, bytes | None]:
    """(body, appended signature value or None)."""
    if not data.endswith(SIGNATURE_MAGIC):
        return data, None
    end = len(data) - len(SIGNATURE_MAGIC)
    if end < 4:
        raise TruncatedError("the appended signature's trailer is cut short")
    (n,) = struct.unpack_from(">I", data, end - 4)
    start = end - 4 - n
    if n == 0 or n > MAX_SIGNATURE or start < _HEADER.size:
        raise FormatError(f"the appended signature's length ({n}) is out of range")
    return data[:start], data[start : end - 4]


def parse(data: bytes) -> DigestList:
    """A digest list from its bytes (an appended signature is split off into ``.signature``)."""
    body, signature = split_signature(data)
    if len(body) < _HEADER.size:
        raise TruncatedError(f"a digest list starts with a {_HEADER.size}-byte header")
    magic, version, algo_id, flags, count, created, srclen = _HEADER.unpack_from(body)
    if magic != MAGIC:
        raise FormatError("not an imaguard digest list (bad magic)")
    if version != VERSION:
        raise FormatError(
            f"digest list format version {version} is not supported (this imaguard reads "
            f"version {VERSION})"
        )
    try:
        algo = by_id(algo_id)
    except FormatError as e:
        raise FormatError(f"digest list algorithm id {algo_id}: {e}") from e
    if flags & ~FLAG_PATHS:
        raise FormatError(f"unknown digest list flags 0x{flags:x}")
    if srclen > MAX_SOURCE:
        raise FormatError(f"source length {srclen} is over {MAX_SOURCE}")
    off = _HEADER.size
    if len(body) < off + srclen:
        raise TruncatedError("the digest list ends inside its source field")
    try:
        source = body[off : off + srclen].decode()
    except UnicodeDecodeError as e:
        raise FormatError(f"the source field is not UTF-8 (byte {e.start})") from e
    off += srclen
    pad = -off % 8
    if any(body[off : off + pad]):
        raise FormatError("the padding after the source field is not zero bytes")
    off += pad
    size = algo.digest_size
    end = off + count * size
    if len(body) < end:
        raise TruncatedError(
            f"the digest list says {count} digests but holds {max(0, len(body) - off) // size}"
        )
    table = body[off:end]
    digests = tuple(table[i : i + size] for i in range(0, len(table), size))
    paths: tuple[str, ...] | None = None
    if flags & FLAG_PATHS:
        out: list[str] = []
        pos = end
        for i in range(count):
            if pos + 2 > len(body):
                raise TruncatedError(f"the digest list ends before path {i}")
            (n,) = struct.unpack_from(">H", body, pos)
            pos += 2
            if pos + n > len(body):
                raise TruncatedError(f"the digest list ends inside path {i}")
            out.append(body[pos : pos + n].decode("utf-8", "surrogateescape"))
            pos += n
        end = pos
        paths = tuple(out)
    if len(body) != end:
        raise FormatError(f"{len(body) - end} bytes follow the digest list's last entry")
    return DigestList(algo, digests, created, source, paths, signature)
