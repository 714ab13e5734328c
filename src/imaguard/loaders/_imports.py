"""The Python import guard: import only module bytes that were verified in memory.

:func:`install_import_guard` puts a finder first on ``sys.meta_path``. For every module the
standard path finder locates as a file, the guard's loader reads the file **once** through
one descriptor (its bytes and its stored signature), verifies those bytes against the
keyring, and compiles exactly those bytes — nothing is read from disk twice, so a writer
cannot swap the file between the check and the use.

* Source modules (``.py``): if the module's cached bytecode (``__pycache__/*.pyc``) carries
  a signature, it is verified and, when its header matches the source file (the usual
  mtime/size or hash check), its code is used (no compile); a ``.pyc`` whose signature does
  **not** verify is refused (a tampered ``.pyc``); a ``.pyc`` with no signature at all is
  ignored and the verified source is compiled. Bytecode is never written.
* Sourceless modules (only a ``.pyc``): the ``.pyc`` must verify.
* Extension modules (``.so``) cannot be loaded from memory: the file is verified on disk
  (a window remains until the dynamic loader maps it; the daemon's ``MMAP_CHECK`` rule
  closes it in the kernel's path).
* Built-in and frozen modules are part of the interpreter and are not checked; neither is
  anything imported before the guard was installed (``sys.modules``), nor the modules the
  guard itself needs while it verifies (imaguard's own and ``cryptography``'s, imported
  on first use).
* The interpreter's standard library (``sysconfig``'s ``stdlib`` and ``platstdlib``) is
  trusted with the interpreter by default, as the interpreter binary itself is (the guard
  cannot verify the process it runs in): pass ``exempt=()`` to verify it too (then sign
  it), or other path prefixes to trust.

An unsigned or tampered module raises ``ImportError`` naming the file and the cause; in
``mode="log"`` the failure is only logged and the (unverified) bytes read are used.
``importlib.reload`` goes through the guard again.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import marshal
import os
import sys
import sysconfig
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, Any, Literal

from imaguard._fsutil import pread_all
from imaguard.appraise import Verdict, appraise
from imaguard.appraise._files import open_target
from imaguard.appraise._sigstore import SignatureStore, store_for
from imaguard.crypto import Keyring
from imaguard.errors import Error, StoreError, UsageError

if TYPE_CHECKING:
    from imaguard.core import Guard

__all__ = ["ImportGuard", "install_import_guard"]

_log = logging.getLogger(__name__)

GuardMode = Literal["enforce", "log"]
MAX_MODULE = 64 << 20


@dataclass
class ImportGuard:
    """The installed guard: counters, and :meth:`uninstall`."""

    keyring: Keyring
    mode: GuardMode
    store: SignatureStore
    guard: Guard | None = None
    hook: str = "PYTHON_IMPORT"
    exempt: tuple[str, ...] = ()
    verified: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    _finder: _Finder | None = field(default=None, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def uninstall(self) -> None:
        """Take the finder off ``sys.meta_path`` (modules already imported stay)."""
        if self._finder is not None and self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        self._finder = None

    # -- reading and verifying -------------------------------------------------------
    def read(self, path: str) -> tuple[bytes, Verdict]:
        """The file's bytes and their verdict: one open, one read of each."""
        data, _value, verdict = self.read_value(path)
        return data, verdict

    def read_value(self, path: str) -> tuple[bytes, bytes | None, Verdict]:
        """The file's bytes, its stored value and their verdict."""
        with self.busy():
            return self._read_value(path)

    def busy(self) -> _Busy:
        """While the guard itself works, its own imports take the usual finders."""
        return _Busy(self._local)

    def read_signed(self, path: str) -> tuple[bytes, bytes | None, Verdict] | None:
        """As :meth:`read_value`, but None (nothing read) when the file is missing or has
        nothing stored: a cached ``.pyc`` nobody signed is passed over, not refused."""
        with self.busy():
            return self._read_value(path, only_stored=True)

    def _read_value(
        self, path: str, *, only_stored: bool = False
    ) -> tuple[bytes, bytes | None, Verdict] | Any:
        try:
            with open_target(path) as ref:
                try:
                    value = self.store.read(ref)
                except StoreError as e:
                    value = None
                    err: str | None = str(e)
                else:
                    err = None
                if only_stored and value is None:
                    return None
                read = pread_all(ref.fd, MAX_MODULE)
                if read is None:
                    raise ImportError(f"{path}: larger than {MAX_MODULE} bytes", path=path)
                data = read
        except Error as e:
            if only_stored:
                return None
            raise ImportError(f"{path}: {e}", path=path) from e
        if err is not None:
            return data, None, Verdict(path, _status("unknown"), "store", detail=err)
        verdict = appraise(data, self.keyring, value=value)
        return data, value, dataclasses.replace(verdict, target=path)

    def judge(self, path: str, data: bytes, verdict: Verdict, value: bytes | None = None) -> None:
        """Count, run the policy hook, and refuse (enforce) or log a failure."""
        if self.guard is not None:
            with self.busy():
                self._hook(path, data, value)
        if verdict.passed:
            self.verified += 1
            return
        self.refused += 1
        message = f"{path}: {verdict.describe()}"
        self.failures.append(message)
        if self.mode == "enforce":
            raise ImportError(f"imaguard refused to import {message}", path=path)
        _log.warning("import (log mode): %s", message)

    def _hook(self, path: str, data: bytes, value: bytes | None) -> None:
        from imaguard.appraise import MemoryStore
        from imaguard.appraise._loaded import seal_bytes

        assert self.guard is not None
        if isinstance(self.guard.store, MemoryStore) and value is not None:
            self.guard.store.values[path] = value
        fd = seal_bytes(data, path)
        try:
            decision = self.guard.process(fd, self.hook, "MAY_READ", name=path)
        finally:
            os.close(fd)
        if not decision.allowed and self.mode == "enforce":
            self.refused += 1
            raise ImportError(
                f"imaguard refused to import {path}: {self.hook}: "
                f"{decision.detail or 'refused by the policy'}",
                path=path,
            )


def _status(name: str) -> Any:
    from imaguard.appraise import Status

    return Status(name)


class _SourceLoader(importlib.abc.Loader):
    """Loads a .py (or its signed .pyc) from verified bytes."""

    def __init__(self, ig: ImportGuard, fullname: str, path: str) -> None:
        self.ig = ig
        self.name = fullname
        self.path = path

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        code = self.get_code(self.name)
        exec(code, module.__dict__)  # noqa: S102 - the verified bytes of the module

    def get_code(self, fullname: str) -> CodeType:
        code = self._cached_code()
        if code is not None:
            return code
        data, value, verdict = self.ig.read_value(self.path)
        self.ig.judge(self.path, data, verdict, value)
        return compile(data, self.path, "exec", dont_inherit=True)

    def _cached_code(self) -> CodeType | None:
        try:
            cached = importlib.util.cache_from_source(self.path)
        except (NotImplementedError, ValueError):
            return None
        found = self.ig.read_signed(cached)  # one open: the value, then the bytes
        if found is None:
            return None  # no .pyc, or one nobody signed: use the verified source
        data, value, verdict = found
        self.ig.judge(cached, data, verdict, value)  # a signed .pyc that fails: refused
        try:
            st = os.stat(self.path)
            flags = int.from_bytes(data[4:8], "little")
            if data[:4] != importlib.util.MAGIC_NUMBER:
                return None
            if flags & 0x1:  # hash-based .pyc: compare with the source's hash
                source, svalue, sverdict = self.ig.read_value(self.path)
                self.ig.judge(self.path, source, sverdict, svalue)
                if importlib.util.source_hash(source) != data[8:16]:
                    return None
            elif (
                int.from_bytes(data[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
                or int.from_bytes(data[12:16], "little") != st.st_size & 0xFFFFFFFF
            ):
                return None  # stale: the source changed since; compile the verified source
            code = marshal.loads(data[16:])  # noqa: S302 - verified bytecode
        except (OSError, ValueError, EOFError, TypeError):
            return None
        return code if isinstance(code, CodeType) else None

    def get_source(self, fullname: str) -> str | None:
        data, _ = self.ig.read(self.path)
        return importlib.util.decode_source(data)

    def is_package(self, fullname: str) -> bool:
        return os.path.basename(self.path).startswith("__init__.")

    def get_filename(self, fullname: str) -> str:
        return self.path


class _SourcelessLoader(_SourceLoader):
    def get_code(self, fullname: str) -> CodeType:
        data, value, verdict = self.ig.read_value(self.path)
        self.ig.judge(self.path, data, verdict, value)
        if data[:4] != importlib.util.MAGIC_NUMBER:
            raise ImportError(f"{self.path}: bad magic number", path=self.path)
        code = marshal.loads(data[16:])  # noqa: S302 - verified bytecode
        if not isinstance(code, CodeType):
            raise ImportError(f"{self.path}: not a code object", path=self.path)
        return code

    def get_source(self, fullname: str) -> str | None:
        return None


class _Busy:
    def __init__(self, local: threading.local) -> None:
        self.local = local
        self.was = False

    def __enter__(self) -> None:
        self.was = getattr(self.local, "on", False)
        self.local.on = True

    def __exit__(self, *exc: object) -> None:
        self.local.on = self.was


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, ig: ImportGuard) -> None:
        self.ig = ig

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if getattr(self.ig._local, "on", False):
            return None  # an import the guard's own verification needs: the usual finders
        return self._find(fullname, path, target)

    def _find(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None,
    ) -> importlib.machinery.ModuleSpec | None:
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.origin is None or not spec.has_location:
            return spec
        if self.ig.exempt and _is_exempt(spec.origin, self.ig.exempt):
            return spec
        loader = spec.loader
        origin = spec.origin
        if isinstance(loader, importlib.machinery.SourceFileLoader):
            spec.loader = _SourceLoader(self.ig, fullname, origin)
        elif isinstance(loader, importlib.machinery.SourcelessFileLoader):
            spec.loader = _SourcelessLoader(self.ig, fullname, origin)
        elif isinstance(loader, importlib.machinery.ExtensionFileLoader):
            data, value, verdict = self.ig.read_value(origin)  # on disk; mapped again later
            self.ig.judge(origin, data, verdict, value)
        spec.cached = None  # bytecode is never written by the guard
        return spec

    def invalidate_caches(self) -> None:
        importlib.machinery.PathFinder.invalidate_caches()


def stdlib_paths() -> tuple[str, ...]:
    """The interpreter's own standard library directories (real paths, trailing /).

    Taken from the base installation (``sys.base_prefix``), never a virtual environment's
    ``lib/pythonX.Y``, which holds ``site-packages``.
    """
    base = {
        "base": sys.base_prefix,
        "installed_base": sys.base_prefix,
        "platbase": sys.base_exec_prefix,
        "installed_platbase": sys.base_exec_prefix,
    }
    paths = sysconfig.get_paths(vars=base)
    out = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths}
    return tuple(sorted(p.rstrip("/") + "/" for p in out))


def _is_exempt(origin: str, exempt: tuple[str, ...]) -> bool:
    """Under an exempt prefix, and not in any site-packages / dist-packages below it."""
    real = os.path.realpath(origin)
    if not real.startswith(exempt):
        return False
    parts = real.split(os.sep)
    return "site-packages" not in parts and "dist-packages" not in parts


def install_import_guard(
    keyring: Keyring | str | os.PathLike[str],
    *,
    policy: Guard | None = None,
    mode: GuardMode = "enforce",
    store: SignatureStore | str | None = None,
    hook: str = "PYTHON_IMPORT",
    exempt: Sequence[str] | None = None,
) -> ImportGuard:
    """Verify every module imported from now on (see the module doc); returns the guard.

    ``policy``: a Guard whose policy also runs for ``hook`` on each module's verified bytes
    (measurement and audit into its log and trail; an appraise rule there must pass too).
    ``exempt``: path prefixes whose modules are trusted unverified; default: the
    standard library (:func:`stdlib_paths`); ``()`` verifies everything.
    """
    if mode not in ("enforce", "log"):
        raise UsageError(f"import guard: mode must be enforce or log, not {mode!r}")
    ring = keyring if isinstance(keyring, Keyring) else Keyring.load(keyring)
    st = store_for(store) if store is None or isinstance(store, str) else store
    prefixes = (
        stdlib_paths()
        if exempt is None
        else tuple(os.path.realpath(p).rstrip("/") + "/" for p in exempt)
    )
    ig = ImportGuard(ring, mode, st, policy, hook, prefixes)
    finder = _Finder(ig)
    ig._finder = finder
    sys.meta_path.insert(0, finder)
    importlib.invalidate_caches()
    return ig
