"""Where a file's ``security.ima`` value lives: pluggable signature stores.

=============  ================================  =========================================
name           where                             when
=============  ================================  =========================================
``xattr``      the ``security.ima`` xattr        default as root (what the kernel reads)
``user-xattr`` the ``user.ima`` xattr            unprivileged (``evmctl --xattr-user``)
``sigfile``    a sidecar file ``FILE.sig``       no xattrs needed (``evmctl --sigfile``)
=============  ================================  =========================================

Writes never leave a half-written value: an xattr is replaced by one ``setxattr`` call,
a sidecar through a temporary file and ``rename``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import Protocol

from imaguard.appraise._files import FileRef
from imaguard.errors import StoreError, UsageError

__all__ = [
    "STORE_NAMES",
    "MemoryStore",
    "SidecarStore",
    "SignatureStore",
    "XattrStore",
    "default_store",
    "store_for",
]

STORE_NAMES = ("xattr", "user-xattr", "sigfile")
MAX_VALUE_SIZE = 65536
"""Largest value read back (the kernel's XATTR_SIZE_MAX)."""


class SignatureStore(Protocol):
    """Reads and writes the ``security.ima``-format value of an open file."""

    name: str

    def read(self, ref: FileRef) -> bytes | None:
        """The stored value, or None when there is none. StoreError when it cannot be read."""
        ...

    def write(self, ref: FileRef, value: bytes) -> None:
        """Replace the stored value atomically. StoreError when it cannot be written."""
        ...


def _xattr_error(ref: FileRef, attr: str, e: OSError, doing: str) -> StoreError:
    if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
        return StoreError(
            f"{ref.name}: the filesystem does not support extended attributes ({attr})"
        )
    if e.errno == errno.EPERM and attr.startswith("security."):
        return StoreError(
            f"{ref.name}: writing {attr} needs root (CAP_SYS_ADMIN) and a file that is not "
            "immutable; "
            "try --store user-xattr or sigfile"
        )
    if e.errno == errno.E2BIG or e.errno == errno.ERANGE:
        return StoreError(f"{ref.name}: {attr} value is too large")
    return StoreError(f"{ref.name}: cannot {doing} {attr}: {e.strerror or e}")


class XattrStore:
    """An extended attribute on the file itself, read and written through its descriptor."""

    def __init__(self, attribute: str = "security.ima") -> None:
        self.attribute = attribute
        self.name = "xattr" if attribute == "security.ima" else attribute

    def read(self, ref: FileRef) -> bytes | None:
        try:
            return os.getxattr(ref.fd, self.attribute)
        except OSError as e:
            if e.errno == errno.ENODATA:
                return None
            raise _xattr_error(ref, self.attribute, e, "read") from e

    def write(self, ref: FileRef, value: bytes) -> None:
        try:
            os.setxattr(ref.fd, self.attribute, value)
        except OSError as e:
            raise _xattr_error(ref, self.attribute, e, "write") from e


class SidecarStore:
    """A file ``PATH.sig`` beside the file, holding exactly the xattr bytes (as evmctl)."""

    name = "sigfile"
    suffix = ".sig"

    def _path(self, ref: FileRef) -> str:
        if ref.path is None:
            raise StoreError(f"{ref.name}: a sidecar .sig file needs a path, not a descriptor")
        return ref.path + self.suffix

    def read(self, ref: FileRef) -> bytes | None:
        path = self._path(ref)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{path}: cannot read signature file: {e.strerror or e}") from e
        try:
            st = os.fstat(fd)
            if not (st.st_mode & 0o170000) == 0o100000:
                raise StoreError(f"{path}: signature file is not a regular file")
            if st.st_size > MAX_VALUE_SIZE:
                raise StoreError(
                    f"{path}: signature file is {st.st_size} bytes (at most {MAX_VALUE_SIZE})"
                )
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read(MAX_VALUE_SIZE + 1)
        finally:
            os.close(fd)

    def write(self, ref: FileRef, value: bytes) -> None:
        path = self._path(ref)
        directory, base = os.path.split(path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory or ".")
        except OSError as e:
            raise StoreError(f"{path}: cannot write signature file: {e.strerror or e}") from e
        try:
            os.fchmod(fd, 0o644)
            try:
                os.write(fd, value)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(f"{path}: cannot write signature file: {e.strerror or e}") from e


class MemoryStore:
    """A dictionary from path (or descriptor name) to value: the in-memory double for tests."""

    name = "memory"

    def __init__(self, values: dict[str, bytes] | None = None) -> None:
        self.values: dict[str, bytes] = dict(values or {})

    def read(self, ref: FileRef) -> bytes | None:
        return self.values.get(ref.path or ref.name)

    def write(self, ref: FileRef, value: bytes) -> None:
        self.values[ref.path or ref.name] = bytes(value)


def default_store() -> SignatureStore:
    """``security.ima`` as root, ``user.ima`` otherwise."""
    return XattrStore("security.ima") if os.geteuid() == 0 else XattrStore("user.ima")


def store_for(name: str | None) -> SignatureStore:
    """The store called ``name`` (one of STORE_NAMES); None gives the default."""
    if name is None:
        return default_store()
    if name == "xattr":
        return XattrStore("security.ima")
    if name == "user-xattr":
        return XattrStore("user.ima")
    if name == "sigfile":
        return SidecarStore()
    raise UsageError(f"unknown signature store {name!r} (choose from {', '.join(STORE_NAMES)})")
