"""Building measurement entries the way the kernel fills templates (spec kernel-ima.md §4.2).

* The file-digest algorithm follows the stored ``security.ima`` value (a signature's or
  digest's algorithm) when there is one, else ``ima_hash`` (spec §3.7, checklist 9).
* ``sig`` holds the whole stored value when it is a signature (0x03 or 0x06), else is empty.
* Names are the resolved absolute path, spaces stored as ``_``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable

from imaguard.appraise._files import Digest, FileRef, hash_fd, open_target
from imaguard.appraise._sigstore import SignatureStore, store_for
from imaguard.errors import StoreError
from imaguard.formats import hashalgo
from imaguard.formats.hashalgo import HashAlgo
from imaguard.formats.template import (
    TemplateDescriptor,
    TemplateEntry,
    encode_digest_ng,
    encode_name,
)

__all__ = [
    "algorithm_for_value",
    "buffer_entry",
    "entry_for_open_file",
    "file_entry",
    "violation_entry",
]


def algorithm_for_value(value: bytes | None, default: str) -> HashAlgo:
    """``ima_get_hash_algo``: the algorithm a stored value names, else ``default``."""
    fallback = hashalgo.by_name(default)
    if value is None or len(value) < 2:
        return fallback
    kind = value[0]
    algo_id: int | None = None
    if kind in (0x03, 0x06) and len(value) > 9:
        if (kind == 0x03 and value[1] == 2) or (kind == 0x06 and value[1] == 3):
            algo_id = value[2]
    elif kind == 0x04:
        algo_id = value[1]
    elif kind == 0x01:
        if len(value) == 17:
            return hashalgo.by_name("md5")
        if len(value) == 21:
            return hashalgo.by_name("md5" if value[17:] == b"\0\0\0\0" else "sha1")
    if algo_id is None or algo_id >= len(hashalgo.ALGORITHMS):
        return fallback
    algo = hashalgo.by_id(algo_id)
    return algo if algo.computable else fallback


def _fields(
    template: TemplateDescriptor,
    name: bytes,
    algo: HashAlgo,
    digest: bytes,
    sha1: bytes,
    sig: bytes,
    buf: bytes,
    st: os.stat_result | None,
) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for fid in template.fields:
        if fid == "d":
            out.append(sha1)
        elif fid == "n":
            # A name too long for the ima template: the kernel uses the file's last
            # path component (it has the file), spec §4.2.
            short = name if len(name) < 256 or st is None else name.rstrip(b"/").rsplit(b"/", 1)[-1]
            out.append(encode_name(short, "n"))
        elif fid == "d-ng":
            out.append(encode_digest_ng(algo, digest))
        elif fid == "d-ngv2":
            out.append(b"ima:" + encode_digest_ng(algo, digest))
        elif fid == "n-ng":
            out.append(encode_name(name, "n-ng"))
        elif fid == "sig":
            out.append(sig)
        elif fid == "buf":
            out.append(buf)
        elif fid in ("iuid", "igid"):
            out.append(
                b"" if st is None else struct.pack("<I", st.st_uid if fid == "iuid" else st.st_gid)
            )
        elif fid == "imode":
            out.append(b"" if st is None else struct.pack("<H", st.st_mode & 0xFFFF))
        else:  # d-modsig, modsig, evmsig, xattr*: nothing to carry here
            out.append(b"")
    return tuple(out)


def entry_for_open_file(
    ref: FileRef,
    template: TemplateDescriptor,
    *,
    value: bytes | None,
    hasher: Callable[[HashAlgo], Digest],
    ima_hash: str = "sha256",
    pcr: int = 10,
) -> TemplateEntry:
    """The entry for an open file whose stored value was read already.

    ``hasher`` returns the content digest for an algorithm (it may come from a memo shared
    with appraisal, so the file is hashed once).
    """
    algo = algorithm_for_value(value, ima_hash)
    digest = hasher(algo)
    sha1 = b""
    if "d" in template.fields:
        # The legacy d field is always a SHA-1 digest: re-hash when the algorithm differs.
        sha1 = digest.value if algo.name == "sha1" else hasher(hashalgo.by_name("sha1")).value
    sig = value if value is not None and value[:1] in (b"\x03", b"\x06") else b""
    name = os.fsencode(os.path.realpath(ref.path)) if ref.path is not None else ref.name.encode()
    return TemplateEntry(
        pcr, template, _fields(template, name, algo, digest.value, sha1, sig, b"", ref.st)
    )


def file_entry(
    path: str | os.PathLike[str],
    template: TemplateDescriptor,
    *,
    ima_hash: str = "sha256",
    pcr: int = 10,
    store: SignatureStore | str | None = None,
) -> TemplateEntry:
    """Measure one file and fill ``template`` (FileChangedError if it changes while hashed)."""
    st_store = store_for(store) if store is None or isinstance(store, str) else store
    with open_target(path) as ref:
        try:
            value = st_store.read(ref)
        except StoreError:
            value = None  # no xattr support: measure without a signature
        return entry_for_open_file(
            ref,
            template,
            value=value,
            ima_hash=ima_hash,
            pcr=pcr,
            hasher=lambda algo: hash_fd(ref, algo),
        )


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()  # noqa: S324 - the kernel's legacy d field is SHA-1


def buffer_entry(
    name: str | bytes,
    data: bytes,
    template: TemplateDescriptor | None = None,
    *,
    ima_hash: str = "sha256",
    pcr: int = 10,
) -> TemplateEntry:
    """Measure a buffer (``ima-buf``: key, kexec-cmdline, critical data)."""
    desc = template or TemplateDescriptor.lookup("ima-buf")
    algo = hashalgo.by_name(ima_hash)
    digest = hashlib.new(algo.hashlib_name or algo.name, data).digest()
    raw_name = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    return TemplateEntry(
        pcr,
        desc,
        _fields(desc, raw_name, algo, digest, _sha1(data), b"", data, None),
    )


def violation_entry(
    path: str | bytes, template: TemplateDescriptor, *, ima_hash: str = "sha256", pcr: int = 10
) -> TemplateEntry:
    """A ToMToU / open-writers record: zero digests, the path, PCR extended with 0xFF."""
    algo = hashalgo.by_name(ima_hash)
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    fields = _fields(template, raw, algo, b"\0" * algo.digest_size, b"\0" * 20, b"", b"", None)
    return TemplateEntry(pcr, template, fields, violation=True)
