"""A digest list of the files dpkg installed, re-hashed from disk.

Which files belong to a package comes from dpkg's database (``var/lib/dpkg/info/PKG.list``
or ``PKG:ARCH.list``, as ``dpkg-query -L`` reads it, with ``var/lib/dpkg/diversions``
applied); the digests are computed here from the files on disk. dpkg's ``md5sums`` are
never used: MD5 vouches for nothing, and the files themselves are what the list is about.

The list records what is on disk *now*: a file changed since it was installed (an edited
conffile, or an attacker's change) is recorded as it is. Make such a list on a system you
trust (freshly installed, or an image before it is booted).
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass

from imaguard.digestlists._common import (
    MakeReport,
    algorithm_for,
    build,
    hash_regular,
    join_source,
    note_unreadable,
)
from imaguard.errors import FileError, UsageError
from imaguard.formats.digestlist import DigestList
from imaguard.formats.hashalgo import HashAlgo

__all__ = ["make_from_dpkg"]

_log = logging.getLogger("imaguard.digestlists")

# Package states whose files are not (or no longer) on disk.
_NO_FILES = frozenset({"not-installed", "config-files"})


@dataclass(frozen=True)
class _Package:
    name: str
    arch: str
    version: str
    state: str


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise FileError(path, f"cannot read {what}: {e.strerror or e}") from e


def _status(path: str) -> list[_Package]:
    """Every package paragraph of dpkg's status file."""
    text = _read(path, "dpkg's status (is this a Debian system? is the root right?)")
    out: list[_Package] = []
    for para in text.decode("utf-8", "replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if not line or line[0] in " \t":
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if "package" not in fields:
            continue
        words = fields.get("status", "").split()
        out.append(
            _Package(
                fields["package"],
                fields.get("architecture", ""),
                fields.get("version", ""),
                words[2] if len(words) == 3 else "not-installed",
            )
        )
    return out


def _diversions(path: str) -> dict[str, tuple[str, str]]:
    """``from`` -> (``to``, diverting package; ``:`` for a local diversion)."""
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").split("\n")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise FileError(path, f"cannot read dpkg's diversions: {e.strerror or e}") from e
    out: dict[str, tuple[str, str]] = {}
    for i in range(0, len(lines) - 2, 3):
        out[lines[i]] = (lines[i + 1], lines[i + 2])
    return out


def _select(installed: list[_Package], packages: list[str] | None, status: str) -> list[_Package]:
    if packages is None:
        return installed
    chosen: list[_Package] = []
    for spec in packages:
        name, _, arch = spec.partition(":")
        found = [p for p in installed if p.name == name and (not arch or p.arch == arch)]
        if not found:
            raise UsageError(f"{status}: package {spec!r} is not installed")
        chosen.extend(p for p in found if p not in chosen)
    return chosen


def _list_file(info: str, pkg: _Package) -> str:
    """``PKG:ARCH.list`` (Multi-Arch: same) or ``PKG.list``."""
    qualified = os.path.join(info, f"{pkg.name}:{pkg.arch}.list")
    if pkg.arch and os.path.exists(qualified):
        return qualified
    return os.path.join(info, f"{pkg.name}.list")


def make_from_dpkg(
    packages: list[str] | tuple[str, ...] | None = None,
    *,
    algorithm: str | HashAlgo = "sha256",
    root: str | os.PathLike[str] = "/",
    with_paths: bool = True,
    report: MakeReport | None = None,
) -> DigestList:
    """The installed regular files of ``packages`` (``NAME`` or ``NAME:ARCH``; every
    installed package when None), hashed from disk with ``algorithm``.

    ``root`` is the system's root (an image mounted elsewhere): the database is read from
    ``ROOT/var/lib/dpkg`` and the files from under ``ROOT``; the list's paths are the
    paths on that system. Conffiles are included, as they are on disk now. Diverted files
    are hashed where the diversion put them. Files the database lists but that are not on
    disk are counted in ``report.missing``. The source is ``dpkg:NAME=VERSION,...``.

    With a ``root`` other than ``/``, an *absolute* symbolic link to a directory inside the
    image (``lib -> /usr/lib``) resolves on this system, not in the image: Debian's own
    links (merged ``/usr``) are relative, but check an image that has such links.
    """
    algo = algorithm_for(algorithm)
    rep = report if report is not None else MakeReport()
    base = os.path.abspath(os.fspath(root))
    admin = os.path.join(base, "var", "lib", "dpkg")
    status_path = os.path.join(admin, "status")
    installed = [p for p in _status(status_path) if p.state not in _NO_FILES]
    chosen = sorted(
        _select(installed, list(packages) if packages is not None else None, status_path),
        key=lambda p: (p.name, p.arch),
    )
    diversions = _diversions(os.path.join(admin, "diversions"))
    info = os.path.join(admin, "info")
    entries: list[tuple[bytes, str | None]] = []
    seen: set[str] = set()
    for pkg in chosen:
        list_path = _list_file(info, pkg)
        raw = _read(list_path, f"the file list of {pkg.name}")
        for line in raw.decode("utf-8", "surrogateescape").split("\n"):
            if not line.startswith("/") or line == "/.":
                continue
            target, diverter = diversions.get(line, (line, pkg.name))
            path = line if diverter == pkg.name else target
            if path in seen:
                continue
            seen.add(path)
            on_disk = os.path.join(base, path.lstrip("/"))
            try:
                mode = os.lstat(on_disk).st_mode
            except FileNotFoundError:
                rep.missing.append(path)
                _log.info("%s (%s): listed by dpkg, not on disk", path, pkg.name)
                continue
            except OSError as e:
                note_unreadable(rep, path, e.strerror or str(e))
                continue
            if stat.S_ISREG(mode):
                digest = hash_regular(on_disk, algo, rep, shown=path)
                if digest is not None:
                    entries.append((digest, path))
            elif stat.S_ISLNK(mode):
                rep.skipped.append((path, "symbolic link (not followed)"))
            elif not stat.S_ISDIR(mode):
                rep.skipped.append((path, "not a regular file"))
    count = Counter(p.name for p in chosen)
    labels = sorted(
        {
            f"{p.name}:{p.arch}={p.version}" if count[p.name] > 1 else f"{p.name}={p.version}"
            for p in chosen
        }
    )
    _log.info("dpkg: %d package instances, %s", len(chosen), rep.summary())
    return build(algo, entries, source=join_source("dpkg", labels), with_paths=with_paths)
