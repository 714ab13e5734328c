"""The happy path of many appraisals: "this file certainly passes", cheaply.

A tree verify spends most of its time on files that pass. :func:`quick_pass` builds a
predicate that answers True only when :func:`imaguard.appraise` would return a passing
verdict for the same file, keyring and store, doing only the work that needs (open,
``fgetxattr``, one read, the hash, the signature check) with nothing allocated per file
beyond the bytes read. Anything unusual (no value, a digest value, a v3 signature, an
unknown, revoked or shared key id, a blacklisted digest, a file that changed while read, a
signature that does not verify, any error) answers False, and the caller asks
:func:`imaguard.appraise` for the verdict and its reason: the predicate decides nothing
that the full path would decide otherwise, it only skips building the verdict of a pass.

Where the optional C extension ``imaguard._native`` is built, :meth:`QuickPass.many`
answers for a whole batch in C with the GIL released (two threads verify on two cores in
one process); which (algorithm, key id) pairs it may trust is still decided here, by
``check_for``, and handed to it one pair at a time. ``IMAGUARD_NATIVE=0`` in the
environment turns it off; the answers are the same either way.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from imaguard.appraise._files import FileRef, hash_fd
from imaguard.appraise._sigstore import SignatureStore, XattrStore
from imaguard.errors import Error
from imaguard.formats import hashalgo

if TYPE_CHECKING:
    from imaguard.crypto._keyring import Keyring

__all__ = ["QuickPass", "native_enabled", "quick_pass"]

SMALL = 1 << 16
"""Files up to this size are read with one ``read``; larger ones through ``hash_fd``."""

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_V2_SIGNATURE = 3  # XattrType.EVM_IMA_XATTR_DIGSIG, version byte 2
_HEADER = 9

Check = Callable[[bytes, bytes], bool]


def _native_module() -> Any:
    try:
        from imaguard import _native
    except ImportError:
        return None
    return _native


def native_enabled() -> bool:
    """Whether :meth:`QuickPass.many` runs in C here (built, and not turned off)."""
    return os.environ.get("IMAGUARD_NATIVE", "1") != "0" and _native_module() is not None


class QuickPass:
    """The predicate of :func:`quick_pass`: ``quick(path) -> bool``, and :meth:`many`."""

    def __init__(self, passes: Callable[[str], bool], native: Any) -> None:
        self._passes = passes
        self._native = native

    @property
    def native(self) -> bool:
        """True when :meth:`many` runs in C without the GIL (worth a thread per core)."""
        return self._native is not None

    def __call__(self, path: str) -> bool:
        return self._passes(path)

    def many(self, paths: Sequence[str]) -> tuple[int, list[str]]:
        """How many of ``paths`` certainly pass, and the others (in order), for the full
        path to judge."""
        if self._native is None:
            rest = [p for p in paths if not self._passes(p)]
            return len(paths) - len(rest), rest
        flags = self._native.run(paths)
        ok = flags.count(1)
        if ok == len(paths):
            return ok, []
        rest = []
        for path, flag in zip(paths, flags, strict=True):
            if flag == 1:
                continue
            # 2: a pair seen for the first time; the Python predicate registers it.
            if flag == 2 and self._passes(path):
                ok += 1
            else:
                rest.append(path)
        return ok, rest


def quick_pass(
    keyring: Keyring,
    *,
    require: str,
    store: SignatureStore,
    algorithms: frozenset[str] | None = None,
    native: bool | None = None,
) -> QuickPass | None:
    """A predicate ``passes(path) -> bool`` as described above, or None when these
    settings have no quick path (a store other than an xattr, a digest or fs-verity
    requirement): then every file goes through :func:`imaguard.appraise`.

    ``native`` asks for the C path (None: where :func:`native_enabled`); it is not used
    while the keyring blacklists digests (the blacklist is looked up in Python).
    """
    if not isinstance(store, XattrStore) or require not in ("signature", "any"):
        return None
    from imaguard.crypto._keys import digest_verifier

    attribute = store.attribute
    blacklist = keyring.blacklisted_digests
    use_native = native_enabled() if native is None else native and _native_module() is not None
    fast = _native_module().QuickVerifier(attribute) if use_native and not blacklist else None
    # (algorithm id, key id) -> (hash constructor, check); filled on first use.
    checks: dict[tuple[int, int], tuple[Callable[[bytes], Any], Check] | None] = {}

    def check_for(algo_id: int, key_id: int) -> tuple[Callable[[bytes], Any], Check] | None:
        found: tuple[Callable[[bytes], Any], Check] | None = None
        try:
            algo = hashalgo.by_id(algo_id)
        except Error:
            algo = None
        certs = keyring.lookup(key_id)
        if (
            algo is not None
            and algo.computable
            and algo.hashlib_name is not None
            and (algorithms is None or algo.name in algorithms)
            and len(certs) == 1
            and not keyring.is_revoked(key_id)
        ):
            try:
                name = algo.hashlib_name
                ctor = getattr(hashlib, name, None) or functools.partial(hashlib.new, name)
                found = (ctor, digest_verifier(certs[0].public_key, algo))
            except Error:
                found = None  # an algorithm that cannot sign: the full path says so
        checks[(algo_id, key_id)] = found
        if fast is not None:
            if found is None or algo is None:
                fast.add(algo_id, key_id, None)
            else:
                from cryptography.hazmat.primitives import serialization

                der = certs[0].public_key.public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                name = (algo.hashlib_name or algo.name).replace("_", "-")
                fast.add(algo_id, key_id, name, der, algo.digest_size)
        return found

    def passes(path: str) -> bool:
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError:
            return False
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return False
            raw = os.getxattr(fd, attribute)
            n = len(raw)
            if n <= _HEADER or raw[0] != _V2_SIGNATURE or raw[1] != 2:
                return False
            if int.from_bytes(raw[7:9], "big") != n - _HEADER:
                return False
            key = (raw[2], int.from_bytes(raw[3:7], "big"))
            found = checks[key] if key in checks else check_for(*key)
            if found is None:
                return False
            new, check = found
            size = before.st_size
            if size <= SMALL:
                data = os.read(fd, size + 1)
                if len(data) != size:
                    return False
                digest = new(data).digest()
            else:
                digest = hash_fd(FileRef(fd, path, path, before), hashalgo.by_id(raw[2])).value
            after = os.fstat(fd)
            if (
                after.st_size != size
                or after.st_mtime_ns != before.st_mtime_ns
                or after.st_ctime_ns != before.st_ctime_ns
            ):
                return False
        except (OSError, Error):
            return False
        finally:
            os.close(fd)
        if blacklist and digest in blacklist:
            return False
        return check(digest, raw[_HEADER:])

    return QuickPass(passes, fast)
