"""A digest list of the regular files inside .deb packages, without installing them.

When ``dpkg-deb`` is installed it reads the package (``dpkg-deb --fsys-tarfile``, every
compression dpkg knows, and ``dpkg-deb -f`` for the name and version). Without it the
``ar`` archive is read here: ``control.tar*`` for the fields and ``data.tar*`` for the
files, decompressed here (gzip, xz/lzma, bzip2; each stream's CRC checked) or by
``zstd -dc`` (a ``.zst`` member) and read with Python's tarfile. Either way the file
contents are hashed as they stream by: nothing is written to disk. Archive paths are made
absolute (``./usr/bin/x`` -> ``/usr/bin/x``); hard links are not listed twice (their target
is), symbolic links and devices are passed over.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import IO, Any, BinaryIO, TypeVar, cast

from imaguard.digestlists._common import MakeReport, algorithm_for, build, join_source
from imaguard.errors import FileError, FormatError, UsageError
from imaguard.formats.digestlist import DigestList
from imaguard.formats.hashalgo import HashAlgo

__all__ = ["make_from_deb"]

T = TypeVar("T")

AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60
_CHUNK = 1 << 20
_TIMEOUT = 300
_IN_CHUNK = 1 << 16
_TarErrors = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)
# (a corrupt compressed stream shows as one of these; tarfile raises some as ReadError)


def _dpkg_deb() -> str | None:
    """The dpkg-deb to use, if any (a function so that tests can take it away)."""
    return shutil.which("dpkg-deb")


def _fields(text: str) -> dict[str, str]:
    """The fields of a control paragraph, names lowercased (continuation lines dropped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line[0] in " \t":
            continue
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def _member_path(name: str) -> str:
    """An archive path as it will be on the system: ``./usr/bin/x`` -> ``/usr/bin/x``."""
    if name.startswith("./"):
        name = name[2:]
    return posixpath.normpath("/" + name)


class _Decompressed:
    """An ar member decompressed as it is read (gzip, xz/lzma, bzip2), with the stream's
    own integrity check (CRC) verified and a stream cut short refused.

    tarfile's own ``r|gz`` does not check the gzip CRC; this does. Output is produced in
    bounded pieces (``max_length``), so a compression bomb cannot fill memory.
    """

    def __init__(self, raw: _Slice, comp: str) -> None:
        self.raw = raw
        self.tail = b""
        self.buf = bytearray()
        self.d: Any
        if comp == ".gz":
            self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif comp in (".xz", ".lzma"):
            self.d = lzma.LZMADecompressor()
        elif comp == ".bz2":
            self.d = bz2.BZ2Decompressor()
        else:
            raise ValueError(f"unknown compression {comp!r}")
        self.zlib = comp == ".gz"

    def _pull(self, want: int) -> bool:
        """Add up to ``want`` bytes to the buffer; False at the end of the stream."""
        d = self.d
        if d.eof:
            return False
        if self.zlib:
            data = self.tail or self.raw.read(_IN_CHUNK)
            if not data:
                raise EOFError("the compressed stream is cut short")
            self.buf += d.decompress(data, want)
            self.tail = d.unconsumed_tail
            return True
        data = b""
        if d.needs_input:
            data = self.raw.read(_IN_CHUNK)
            if not data:
                raise EOFError("the compressed stream is cut short")
        self.buf += d.decompress(data, max_length=want)
        return True

    def read(self, n: int = -1) -> bytes:
        want = _CHUNK if n < 0 else n
        while len(self.buf) < want and self._pull(want - len(self.buf)):
            pass
        if n < 0:
            while self._pull(_CHUNK):
                pass
            want = len(self.buf)
        out = bytes(self.buf[:want])
        del self.buf[:want]
        return out


class _Slice:
    """``size`` bytes of ``f`` from ``start``, read as a stream (an ar member)."""

    def __init__(self, f: BinaryIO, start: int, size: int) -> None:
        self.f, self.pos, self.left = f, start, size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        if n == 0:
            return b""
        self.f.seek(self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        self.left -= len(data)
        return data


def _hash_tar(
    tf: tarfile.TarFile, algo: HashAlgo, rep: MakeReport
) -> list[tuple[bytes, str | None]]:
    entries: list[tuple[bytes, str | None]] = []
    for member in tf:
        path = _member_path(member.name)
        if member.isreg():
            data = tf.extractfile(member)
            if data is None:  # pragma: no cover - isreg() members always have data
                continue
            h = algo.new()
            while chunk := data.read(_CHUNK):
                h.update(chunk)
            entries.append((h.digest(), path))
            rep.hashed += 1
        elif member.issym():
            rep.skipped.append((path, "symbolic link"))
        elif not member.isdir() and not member.islnk():
            rep.skipped.append((path, "not a regular file"))
    return entries


def _drain(stream: IO[bytes] | _Slice | _Decompressed) -> None:
    while stream.read(_CHUNK):
        pass


def _stderr_text(f: IO[bytes]) -> str:
    f.seek(0)
    lines = f.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else ""


def _open_tar(fileobj: IO[bytes] | _Slice | _Decompressed) -> tarfile.TarFile:
    return tarfile.open(
        fileobj=cast(IO[bytes], fileobj), mode="r|", encoding="utf-8", errors="surrogateescape"
    )


# -- with dpkg-deb --------------------------------------------------------------------------
def _control_dpkg_deb(tool: str, deb: str) -> dict[str, str]:
    r = subprocess.run(
        [tool, "-f", deb, "Package", "Version"],
        capture_output=True,
        timeout=_TIMEOUT,
        check=False,
    )
    if r.returncode != 0:
        why = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise FormatError(
            f"{deb}: not a readable Debian package (dpkg-deb: {why[-1] if why else r.returncode})"
        )
    return _fields(r.stdout.decode("utf-8", "replace"))


def _files_dpkg_deb(
    tool: str, deb: str, algo: HashAlgo, rep: MakeReport
) -> list[tuple[bytes, str | None]]:
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen([tool, "--fsys-tarfile", deb], stdout=subprocess.PIPE, stderr=errf)
        out = proc.stdout
        if out is None:  # pragma: no cover - stdout=PIPE
            raise RuntimeError("no pipe")
        try:
            with _open_tar(out) as tf:
                entries = _hash_tar(tf, algo, rep)
            _drain(out)
        except _TarErrors as e:
            proc.kill()
            proc.wait()
            why = _stderr_text(errf) or str(e)
            raise FormatError(f"{deb}: cannot read the files it holds ({why})") from e
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            out.close()
        if proc.wait() != 0:
            why = _stderr_text(errf) or f"exit status {proc.returncode}"
            raise FormatError(f"{deb}: dpkg-deb --fsys-tarfile failed ({why})")
    return entries


# -- without dpkg-deb: the ar archive read here ---------------------------------------------
def _ar_members(f: BinaryIO, deb: str) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of each member of the ar archive."""
    if f.read(len(AR_MAGIC)) != AR_MAGIC:
        raise FormatError(f"{deb}: not a Debian package (no ar archive magic)")
    total = os.fstat(f.fileno()).st_size
    members: dict[str, tuple[int, int]] = {}
    while True:
        head = f.read(_AR_HEADER)
        if not head:
            return members
        if len(head) < _AR_HEADER or head[58:60] != b"`\n":
            raise FormatError(f"{deb}: a malformed or truncated ar member header")
        name = head[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(head[48:58].decode("ascii").strip())
        except ValueError:
            raise FormatError(f"{deb}: ar member {name!r} has a malformed size") from None
        start = f.tell()
        if start + size > total:
            raise FormatError(f"{deb}: ar member {name!r} is cut short")
        members[name] = (start, size)
        f.seek(start + size + (size & 1))


def _member(members: dict[str, tuple[int, int]], prefix: str, deb: str) -> tuple[str, str]:
    """(member name, compression suffix) of the one member named ``prefix[.COMP]``."""
    for name in members:
        if name == prefix or name.startswith(prefix + "."):
            return name, name[len(prefix) :]
    raise FormatError(f"{deb}: not a Debian package (no {prefix} member)")


def _with_tar(
    f: BinaryIO,
    deb: str,
    members: dict[str, tuple[int, int]],
    prefix: str,
    use: Callable[[tarfile.TarFile], T],
) -> T:
    name, comp = _member(members, prefix, deb)
    start, size = members[name]
    raw = _Slice(f, start, size)
    if comp not in ("", ".gz", ".xz", ".lzma", ".bz2", ".zst"):
        raise FormatError(f"{deb}: {name}: unknown compression {comp!r}")
    try:
        if comp == ".zst":
            return _with_zstd(raw, deb, name, use)
        stream = _Decompressed(raw, comp) if comp else raw
        with _open_tar(stream) as tf:
            result = use(tf)
        _drain(stream)  # to the end of the stream: its integrity check is verified there
        return result
    except _TarErrors as e:
        raise FormatError(f"{deb}: cannot read {name} ({str(e) or type(e).__name__})") from e


def _with_zstd(raw: _Slice, deb: str, name: str, use: Callable[[tarfile.TarFile], T]) -> T:
    tool = shutil.which("zstd")
    if tool is None:
        raise FormatError(f"{deb}: {name} is zstd-compressed: reading it needs dpkg-deb or zstd")
    proc = subprocess.Popen(
        [tool, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    stdin, stdout = proc.stdin, proc.stdout
    if stdin is None or stdout is None:  # pragma: no cover - PIPE
        raise RuntimeError("no pipe")

    def feed() -> None:
        with contextlib.suppress(OSError), stdin:
            while chunk := raw.read(_CHUNK):
                stdin.write(chunk)

    feeder = threading.Thread(target=feed, name="imaguard-zstd-feed", daemon=True)
    feeder.start()
    try:
        with _open_tar(stdout) as tf:
            result = use(tf)
        _drain(stdout)
    except BaseException:
        proc.kill()
        raise
    finally:
        stdout.close()
        rc = proc.wait()
        feeder.join()
    if rc != 0:
        raise FormatError(f"{deb}: {name}: zstd could not decompress it (exit status {rc})")
    return result


def _control_from_tar(tf: tarfile.TarFile) -> dict[str, str]:
    for member in tf:
        if _member_path(member.name) == "/control" and member.isreg():
            data = tf.extractfile(member)
            if data is not None:
                return _fields(data.read().decode("utf-8", "replace"))
    return {}


def _read_ar(
    deb: str, algo: HashAlgo, rep: MakeReport
) -> tuple[dict[str, str], list[tuple[bytes, str | None]]]:
    try:
        with open(deb, "rb") as f:
            members = _ar_members(f, deb)
            fields = _with_tar(f, deb, members, "control.tar", _control_from_tar)
            entries = _with_tar(f, deb, members, "data.tar", lambda tf: _hash_tar(tf, algo, rep))
    except OSError as e:
        raise FileError(deb, f"cannot read: {e.strerror or e}") from e
    return fields, entries


# -- the maker --------------------------------------------------------------------------------
def _check(deb: str) -> None:
    """A clear error for a path that is not a readable ar archive, before any tool runs."""
    try:
        with open(deb, "rb") as f:
            magic = f.read(len(AR_MAGIC))
    except IsADirectoryError:
        raise FileError(deb, "is a directory, not a .deb file") from None
    except OSError as e:
        raise FileError(deb, f"cannot read: {e.strerror or e}") from e
    if magic != AR_MAGIC:
        raise FormatError(f"{deb}: not a Debian package (no ar archive magic)")


def make_from_deb(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    algorithm: str | HashAlgo = "sha256",
    with_paths: bool = True,
    report: MakeReport | None = None,
) -> DigestList:
    """The regular files inside the .deb files ``paths``, hashed without installing them.

    One list for all of them; its source is ``deb:PACKAGE=VERSION[,...]``. A file that is
    not a Debian package, or whose archive is corrupt, raises one FormatError naming it.
    """
    algo = algorithm_for(algorithm)
    rep = report if report is not None else MakeReport()
    debs = (
        [os.fspath(paths)]
        if isinstance(paths, str | os.PathLike)
        else [os.fspath(p) for p in paths]
    )
    if not debs:
        raise UsageError("no .deb file given")
    tool = _dpkg_deb()
    entries: list[tuple[bytes, str | None]] = []
    labels: list[str] = []
    for deb in debs:
        _check(deb)
        if tool is not None:
            fields = _control_dpkg_deb(tool, deb)
            entries += _files_dpkg_deb(tool, deb, algo, rep)
        else:
            fields, found = _read_ar(deb, algo, rep)
            entries += found
        if not fields.get("package"):
            raise FormatError(f"{deb}: its control file names no Package")
        labels.append(f"{fields['package']}={fields.get('version', '')}")
    return build(algo, entries, source=join_source("deb", labels), with_paths=with_paths)
