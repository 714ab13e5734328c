"""Load-then-verify: what the caller uses is exactly what was verified.

:func:`load_verified` copies the file into a memfd, seals it (no write, no shrink, no
grow, no more seals), and verifies the signature read from the original file against the
bytes **in the memfd**. The caller gets the sealed memfd (execute it with ``execveat``
or ``fexecve``, or ``mmap`` it) and a read-only view of the same bytes. A writer racing
the copy can make verification fail, but can never make the caller receive bytes that
do not verify: nothing can change the memfd after it is sealed.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from imaguard.appraise._calls import Require, _keyring, appraise
from imaguard.appraise._files import open_target
from imaguard.appraise._sigstore import SignatureStore, store_for
from imaguard.appraise._verdict import Verdict
from imaguard.errors import FileError, StoreError, VerificationError

if TYPE_CHECKING:
    from imaguard.crypto._keyring import Keyring

__all__ = ["VerifiedFile", "load_verified"]

_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
COPY_CHUNK = 1 << 20


@dataclass
class VerifiedFile:
    """A sealed memfd holding verified bytes. Close it (or use ``with``) when done."""

    fd: int
    verdict: Verdict
    size: int
    _map: mmap.mmap | None = field(default=None, repr=False)

    @property
    def data(self) -> memoryview:
        """A read-only view of the verified bytes (an mmap of the sealed memfd)."""
        if self._map is None:
            if self.size == 0:
                return memoryview(b"")
            self._map = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ)
        return memoryview(self._map)

    def read(self) -> bytes:
        """A copy of the verified bytes."""
        return bytes(self.data)

    @property
    def path(self) -> str:
        """A path that opens these same bytes (``/proc/self/fd/N``)."""
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> VerifiedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_verified(
    path: str | os.PathLike[str],
    keyring: Keyring | str | os.PathLike[str],
    *,
    require: Require = "signature",
    algorithms: list[str] | None = None,
    store: SignatureStore | str | None = None,
) -> VerifiedFile:
    """Copy ``path`` into a sealed memfd and verify that copy; VerificationError unless it passes.

    The signature comes from the original file (its ``security.ima``, or the store given);
    the content hashed is the memfd's. Nothing is cached.
    """
    vf = copy_and_appraise(path, keyring, require=require, algorithms=algorithms, store=store)
    if not vf.verdict.passed:
        vf.close()
        raise VerificationError(f"{vf.verdict.target}: {vf.verdict.describe()}", vf.verdict)
    return vf


def copy_and_appraise(
    path: str | os.PathLike[str],
    keyring: Keyring | str | os.PathLike[str],
    *,
    require: Require = "signature",
    algorithms: list[str] | None = None,
    store: SignatureStore | str | None = None,
) -> VerifiedFile:
    """:func:`load_verified` that returns the sealed copy whatever its verdict (log modes).

    A value that cannot be read at all still raises VerificationError.
    """
    ring = _keyring(keyring)
    st = store_for(store) if store is None or isinstance(store, str) else store
    name = os.fspath(path)
    memfd = _new_memfd(name)
    try:
        with open_target(path) as ref:
            try:
                value = st.read(ref)
            except StoreError as e:
                raise VerificationError(f"{name}: {e}") from e
            size = _copy(ref.fd, memfd, name)
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _SEALS)
        if value is not None:
            verdict = appraise(memfd, ring, require=require, algorithms=algorithms, value=value)
        else:
            verdict = appraise(
                memfd, ring, require=require, algorithms=algorithms, store=_NoValue()
            )
        return VerifiedFile(memfd, replace(verdict, target=name), size)
    except BaseException:
        os.close(memfd)
        raise


def _new_memfd(name: str) -> int:
    return os.memfd_create(
        f"imaguard:{os.path.basename(name)}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    )


def seal_bytes(data: bytes, name: str) -> int:
    """A sealed memfd holding ``data`` (close it when done)."""
    memfd = _new_memfd(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(memfd, view) :]
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(memfd)
        raise
    return memfd


def _copy(src: int, dst: int, name: str) -> int:
    """Copy from offset 0 to EOF (copy_file_range, falling back to read/write)."""
    total = 0
    fast = True
    try:
        while True:
            n = -1
            if fast:
                try:
                    n = os.copy_file_range(src, dst, COPY_CHUNK, total, total)
                except OSError:
                    fast = False  # e.g. EXDEV across filesystems: plain reads from here on
            if n < 0:
                n = _copy_slow(src, dst, total)
            if n == 0:
                break
            total += n
    except OSError as e:
        raise FileError(name, f"copy failed: {e.strerror or e}") from e
    return total


def _copy_slow(src: int, dst: int, offset: int) -> int:
    chunk = os.pread(src, COPY_CHUNK, offset)
    if chunk:
        os.pwrite(dst, chunk, offset)
    return len(chunk)


class _NoValue:
    """A store with nothing in it: the original file had no value."""

    name = "none"

    def read(self, ref: object) -> None:
        return None

    def write(self, ref: object, value: bytes) -> None:  # pragma: no cover - never written
        raise StoreError(getattr(ref, "name", "<memfd>"), "nothing can be stored here")
