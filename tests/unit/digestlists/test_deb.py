"""make_from_deb: the files inside .deb archives, hashed without installing them.

A package built here with ``dpkg-deb --build`` (every compression, read through
dpkg-deb and through the built-in ar reader) is compared with what ``dpkg-deb -x``
extracts; a real package is downloaded with ``apt-get download`` when the mirror answers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from imaguard.digestlists import MakeReport, _deb, make_from_deb, make_from_tree
from imaguard.errors import FileError, FormatError, UsageError
from imaguard.formats import digestlist as dlf
from imaguard.formats.digestlist import DigestList

DPKG_DEB = shutil.which("dpkg-deb")
needs_dpkg_deb = pytest.mark.skipif(DPKG_DEB is None, reason="dpkg-deb is not installed")

HELLO = b"#!/bin/sh\necho hello from a test package\n"
README = b"a readme\n" * 50
ODD = b"a file whose name is not UTF-8\n"
BIG = bytes(range(256)) * 8192  # 2 MiB: crosses the 1 MiB read chunk


def build_deb(
    tmp: Path,
    *,
    name: str = "imaguard-test",
    version: str = "1.0-1",
    compression: str = "xz",
) -> Path:
    """A small binary package: a script, a doc file, a symlink, a hard link, a non-UTF-8
    name, a 2 MiB file and an empty one."""
    src = tmp / f"{name}-{compression}-src"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: imaguard tests <tests@example.org>\nDescription: a test package\n"
        " for imaguard's digest lists\n"
    )
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "usr" / "bin" / "hello").write_bytes(HELLO)
    (src / "usr" / "bin" / "hello").chmod(0o755)
    (src / "usr" / "bin" / "hi").symlink_to("hello")
    os.link(src / "usr" / "bin" / "hello", src / "usr" / "bin" / "hello-again")
    doc = src / "usr" / "share" / "doc" / name
    doc.mkdir(parents=True)
    (doc / "README").write_bytes(README)
    (doc / "big").write_bytes(BIG)
    (doc / "empty").write_bytes(b"")
    fd = os.open(os.fsencode(doc) + b"/odd-\xff\xfe", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, ODD)
    os.close(fd)
    out = tmp / f"{name}_{version}_{compression}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(src), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def extracted(deb: Path, where: Path) -> DigestList:
    """The oracle: ``dpkg-deb -x`` and make_from_tree, paths made relative to /."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(where)], check=True, timeout=120)
    dl = make_from_tree(where)
    assert dl.paths is not None
    base = str(where)
    return DigestList(
        dl.algorithm,
        dl.digests,
        paths=tuple(p[len(base) :] for p in dl.paths),
    )


@pytest.fixture(params=["dpkg-deb", "ar"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Read through dpkg-deb, or through the ar/tarfile reader (dpkg-deb taken away)."""
    if request.param == "ar":
        monkeypatch.setattr(_deb, "_dpkg_deb", lambda: None)
    return str(request.param)


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@needs_dpkg_deb
@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd", "none"])
def test_built_package(tmp_path: Path, compression: str, reader: str) -> None:
    if compression == "zstd" and reader == "ar" and shutil.which("zstd") is None:
        pytest.skip("zstd is not installed (the ar reader needs it for .zst members)")
    deb = build_deb(tmp_path, compression=compression)
    report = MakeReport()
    dl = make_from_deb(deb, report=report)
    assert dl.source == "deb:imaguard-test=1.0-1"
    assert dl.paths is not None
    got = dict(zip(dl.paths, dl.digests, strict=True))
    doc = "/usr/share/doc/imaguard-test"
    odd = (doc + "/odd-").encode() + b"\xff\xfe"
    assert got == {
        "/usr/bin/hello": h(HELLO),
        f"{doc}/README": h(README),
        f"{doc}/big": h(BIG),
        f"{doc}/empty": h(b""),
        odd.decode("utf-8", "surrogateescape"): h(ODD),
    }
    assert ("/usr/bin/hi", "symbolic link") in report.skipped
    assert report.hashed == 5
    # the oracle: what dpkg-deb -x extracts, hashed as files
    oracle = extracted(deb, tmp_path / "x")
    assert set(dl.digests) == set(oracle.digests)
    assert dlf.parse(dlf.serialize(dl)) == dl


@needs_dpkg_deb
def test_both_readers_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debs = [build_deb(tmp_path, compression=c) for c in ("xz", "gzip")]
    with_tool = make_from_deb(debs, with_paths=True)
    monkeypatch.setattr(_deb, "_dpkg_deb", lambda: None)
    without = make_from_deb(debs, with_paths=True)
    assert with_tool.digests == without.digests
    assert with_tool.paths == without.paths
    assert with_tool.source == without.source == "deb:imaguard-test=1.0-1,imaguard-test=1.0-1"


@needs_dpkg_deb
def test_several_packages(tmp_path: Path) -> None:
    a = build_deb(tmp_path, name="pkg-a", version="1")
    b = build_deb(tmp_path, name="pkg-b", version="2:0.9~rc1")
    dl = make_from_deb([a, str(b)], algorithm="sha512", with_paths=False)
    assert dl.source == "deb:pkg-a=1,pkg-b=2:0.9~rc1"
    assert dl.paths is None
    assert hashlib.sha512(HELLO).digest() in dl


def test_not_a_deb(tmp_path: Path, reader: str) -> None:
    text = tmp_path / "notes.deb"
    text.write_bytes(b"just some text, not an ar archive\n")
    with pytest.raises(FormatError, match=f"{text}: not a Debian package"):
        make_from_deb(text)
    with pytest.raises(FileError, match=f"{tmp_path}: is a directory"):
        make_from_deb(tmp_path)
    with pytest.raises(FileError, match=r"absent\.deb: cannot read"):
        make_from_deb(tmp_path / "absent.deb")
    with pytest.raises(UsageError, match=r"no \.deb file given"):
        make_from_deb([])


def test_ar_archive_without_the_members(tmp_path: Path, reader: str) -> None:
    if shutil.which("ar") is None:
        pytest.skip("binutils' ar is not installed")
    (tmp_path / "debian-binary").write_text("2.0\n")
    fake = tmp_path / "fake.deb"
    subprocess.run(["ar", "rc", str(fake), "debian-binary"], cwd=tmp_path, check=True)
    with pytest.raises(FormatError, match=f"{fake}: "):
        make_from_deb(fake)


@needs_dpkg_deb
@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_deb(tmp_path: Path, reader: str, cut: float) -> None:
    deb = build_deb(tmp_path, compression="gzip")
    data = deb.read_bytes()
    short = tmp_path / "short.deb"
    short.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(FormatError, match=f"{short}: "):
        make_from_deb(short)


@needs_dpkg_deb
def test_corrupt_data_member(tmp_path: Path, reader: str) -> None:
    deb = build_deb(tmp_path, compression="gzip")
    data = bytearray(deb.read_bytes())
    at = data.index(b"data.tar.gz")
    start = at + 60 + 200  # inside the compressed stream
    data[start : start + 64] = b"\0" * 64
    bad = tmp_path / "bad.deb"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=f"{bad}: "):
        make_from_deb(bad)


def repack(tmp: Path, deb: Path, data_name: str, transform: Callable[[bytes], bytes]) -> Path:
    """The package with its data member replaced by ``transform(data.tar)``, named
    ``data_name`` (``ar`` puts the members back in Debian's order)."""
    work = tmp / f"repack-{data_name}"
    work.mkdir()
    subprocess.run(["ar", "x", str(deb)], cwd=work, check=True, timeout=60)
    control = next(p.name for p in work.iterdir() if p.name.startswith("control.tar"))
    (work / data_name).write_bytes(transform((work / "data.tar").read_bytes()))
    out = tmp / f"repacked-{data_name}.deb"
    subprocess.run(
        ["ar", "rc", str(out), "debian-binary", control, data_name],
        cwd=work,
        check=True,
        timeout=60,
    )
    return out


def _bz2(data: bytes) -> bytes:
    import bz2

    return bz2.compress(data)


def _lzma_alone(data: bytes) -> bytes:
    import lzma

    return lzma.compress(data, format=lzma.FORMAT_ALONE)


def _gzip_cut(data: bytes) -> bytes:
    import gzip

    packed = gzip.compress(data)
    return packed[: len(packed) - 6]  # the CRC/size trailer cut: the member itself is whole


def _gzip_bad_crc(data: bytes) -> bytes:
    import gzip

    packed = bytearray(gzip.compress(data))
    packed[-8] ^= 0xFF  # the CRC32 of the uncompressed data
    return bytes(packed)


needs_ar = pytest.mark.skipif(shutil.which("ar") is None, reason="binutils' ar is not installed")


@needs_dpkg_deb
@needs_ar
@pytest.mark.parametrize(
    ("name", "transform"), [("data.tar.bz2", _bz2), ("data.tar.lzma", _lzma_alone)]
)
def test_bzip2_and_lzma_members(
    tmp_path: Path, reader: str, name: str, transform: Callable[[bytes], bytes]
) -> None:
    deb = repack(tmp_path, build_deb(tmp_path, compression="none"), name, transform)
    dl = make_from_deb(deb)
    assert h(BIG) in dl
    assert h(HELLO) in dl
    assert len(dl) == 5


@needs_dpkg_deb
@needs_ar
@pytest.mark.parametrize("transform", [_gzip_cut, _gzip_bad_crc])
def test_a_damaged_gzip_stream_is_refused(
    tmp_path: Path, reader: str, transform: Callable[[bytes], bytes]
) -> None:
    deb = repack(tmp_path, build_deb(tmp_path, compression="none"), "data.tar.gz", transform)
    with pytest.raises(FormatError, match=f"{deb}: "):
        make_from_deb(deb)


# -- a real package from the mirror -------------------------------------------------------
@pytest.fixture(scope="module")
def downloaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("apt-get") is None or DPKG_DEB is None:
        pytest.skip("apt-get or dpkg-deb is not installed")
    where = tmp_path_factory.mktemp("apt")
    os.chmod(where, 0o755)  # noqa: S103 - apt's _apt user writes the download here
    try:
        r = subprocess.run(
            ["apt-get", "download", "-q", "hostname"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("apt-get download timed out (no network to the package mirror?)")
    debs = sorted(where.glob("hostname_*.deb"))
    if r.returncode != 0 or not debs:
        pytest.skip(f"apt-get download hostname failed (no mirror reachable?): {r.stderr[-300:]}")
    return debs[0]


def test_downloaded_package(downloaded: Path, tmp_path: Path, reader: str) -> None:
    dl = make_from_deb(downloaded)
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(downloaded), "Version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert dl.source == f"deb:hostname={fields}"
    oracle = extracted(downloaded, tmp_path / "x")
    assert dl.digests == oracle.digests
    assert dl.paths is not None
    assert "/bin/hostname" in dl.paths


def test_downloaded_package_matches_the_installed_one(
    downloaded: Path, installed_version: Callable[[str], str | None]
) -> None:
    dl = make_from_deb(downloaded)
    if installed_version("hostname") != dl.source.partition("=")[2]:
        pytest.skip("the installed hostname is another version than the mirror's")
    assert h(Path("/bin/hostname").read_bytes()) in dl


@pytest.fixture
def installed_version() -> Callable[[str], str | None]:
    def version(package: str) -> str | None:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        return r.stdout if r.returncode == 0 else None

    return version
