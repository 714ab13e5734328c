"""Signing digest lists, reading a list file with its detached signature, naming a list."""

from __future__ import annotations

import os
import re

from imaguard.errors import FileError
from imaguard.formats import digestlist as dlformat
from imaguard.formats.digestlist import DigestList
from imaguard.formats.hashalgo import HashAlgo

__all__ = ["list_name", "read_list", "sign_list"]

SIG_SUFFIX = ".sig"


def sign_list(
    dl_or_bytes: DigestList | bytes,
    key: object,
    *,
    detached: bool = False,
    algorithm: str | HashAlgo = "sha256",
) -> bytes:
    """Sign a list: its bytes with the signature appended, or (``detached``) the signature
    value alone, to keep in ``LIST.sig``.

    ``key`` is an :class:`imaguard.PrivateKey` or the path of one. Bytes that already
    carry an appended signature are signed afresh (the old signature is dropped); bytes
    that are not a well-formed list are refused with a FormatError. The value is a v2
    ``security.ima`` signature (type 0x03) over the list, ``algorithm`` its digest.
    """
    from imaguard.appraise import sign_bytes
    from imaguard.crypto import PrivateKey, load_private_key

    if isinstance(dl_or_bytes, DigestList):
        body = dlformat.serialize(dl_or_bytes)
    else:
        body, _ = dlformat.split_signature(bytes(dl_or_bytes))
        dlformat.parse(body)
    if isinstance(key, str | os.PathLike):
        key = load_private_key(key)
    if not isinstance(key, PrivateKey):
        raise TypeError(f"key must be an imaguard.PrivateKey or a path, not {type(key).__name__}")
    value = sign_bytes(body, key, algorithm).serialize()
    return value if detached else dlformat.append_signature(body, value)


def read_list(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    """(the list file's bytes, its detached signature): ``LIST.sig`` is read when the list
    carries no appended signature and the file exists; otherwise None."""
    name = os.fspath(path)
    data = _read(name, "the digest list")
    sig = name + SIG_SUFFIX
    if data.endswith(dlformat.SIGNATURE_MAGIC) or not os.path.exists(sig):
        return data, None
    return data, _read(sig, "the detached signature")


def _read(name: str, what: str) -> bytes:
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise FileError(name, f"cannot read {what}: {e.strerror or e}") from e


_ONE = re.compile(r"\A([a-z][a-z0-9-]*):([^=,]+)=[^,]*\Z")


def list_name(dl: DigestList, fallback: str = "") -> str:
    """The name a list is loaded under: ``KIND:PACKAGE`` for a one-package source
    (``deb:coreutils=9.1-1`` -> ``deb:coreutils``, so that a newer version replaces it by
    name), else the source, else ``fallback``."""
    m = _ONE.match(dl.source)
    if m:
        return f"{m.group(1)}:{m.group(2)}"
    return dl.source or fallback
