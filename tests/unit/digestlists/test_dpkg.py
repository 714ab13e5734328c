"""make_from_dpkg: the files dpkg lists, re-hashed from disk (dpkg's MD5 sums never read).

Against this machine's real dpkg database (coreutils; compared with ``sha256sum`` and
``dpkg-query -L``), and against a made-up root (diversions, Multi-Arch list names,
missing files, states, a lying md5sums file).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imaguard.digestlists import MakeReport, make_from_dpkg
from imaguard.errors import FileError, UsageError

HAVE_DPKG = os.path.exists("/var/lib/dpkg/status") and shutil.which("dpkg-query") is not None
needs_dpkg = pytest.mark.skipif(not HAVE_DPKG, reason="not a Debian system (no dpkg database)")


def run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout


@needs_dpkg
def test_coreutils_digests_equal_sha256sum() -> None:
    report = MakeReport()
    dl = make_from_dpkg(["coreutils"], report=report)
    version = run("dpkg-query", "-W", "-f=${Version}", "coreutils")
    assert dl.source == f"dpkg:coreutils={version}"
    assert dl.paths is not None
    assert len(dl) > 50
    by_path = {p: dg for dg, p in zip(dl.digests, dl.paths, strict=True)}
    wanted = [p for p in ("/bin/ls", "/bin/cat", "/usr/bin/env", "/bin/true") if p in by_path]
    assert len(wanted) >= 2
    out = run("sha256sum", *wanted)
    for line in out.splitlines():
        hexdigest, path = line.split(maxsplit=1)
        assert by_path[path.strip()].hex() == hexdigest


@needs_dpkg
def test_coreutils_is_exactly_its_regular_files() -> None:
    listed = run("dpkg-query", "-L", "coreutils").splitlines()
    regular = {
        p for p in listed if p.startswith("/") and os.path.isfile(p) and not os.path.islink(p)
    }
    expected = {hashlib.sha256(Path(p).read_bytes()).digest() for p in regular}
    dl = make_from_dpkg(["coreutils"])
    assert set(dl.digests) == expected
    assert dl.paths is not None
    assert set(dl.paths) <= regular


@needs_dpkg
def test_several_packages_and_an_arch_qualified_name() -> None:
    arch = run("dpkg", "--print-architecture").strip()
    one = make_from_dpkg(["coreutils"])
    two = make_from_dpkg(["hostname", f"coreutils:{arch}"])
    assert set(one.digests) < set(two.digests)
    assert two.source.startswith("dpkg:coreutils=")
    assert ",hostname=" in two.source


@needs_dpkg
def test_a_package_that_is_not_installed() -> None:
    with pytest.raises(UsageError, match=r"/var/lib/dpkg/status: package 'no-such-pkg-xyz'"):
        make_from_dpkg(["no-such-pkg-xyz"])


# -- a made-up root -----------------------------------------------------------------------
STATUS = """\
Package: tool
Status: install ok installed
Architecture: amd64
Version: 1.0-1
Conffiles:
 /etc/tool.conf 00000000000000000000000000000000
Description: a tool
 with a continuation line: Version: 9

Package: libthing
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2:3.4-5

Package: libthing
Status: install ok installed
Architecture: i386
Multi-Arch: same
Version: 2:3.4-5

Package: gone
Status: deinstall ok config-files
Architecture: all
Version: 0.1

Package: diverter
Status: install ok installed
Architecture: all
Version: 7
"""


def write(root: Path, rel: str, data: bytes | str) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "sysroot"
    info = "var/lib/dpkg/info"
    write(root, "var/lib/dpkg/status", STATUS)
    write(
        root,
        f"{info}/tool.list",
        "/.\n/usr\n/usr/bin\n/usr/bin/tool\n/usr/bin/tool-link\n/etc/tool.conf\n"
        "/usr/share/doc/tool/excluded\n/usr/bin/shared\n",
    )
    write(root, f"{info}/tool.md5sums", "d41d8cd98f00b204e9800998ecf8427e  usr/bin/tool\n")
    write(root, f"{info}/libthing:amd64.list", "/usr/lib/x86_64/libthing.so.3\n/usr/bin/shared\n")
    write(root, f"{info}/libthing:i386.list", "/usr/lib/i386/libthing.so.3\n/usr/bin/shared\n")
    write(root, f"{info}/gone.list", "/usr/bin/gone\n")
    write(root, f"{info}/diverter.list", "/usr/bin/tool\n/usr/bin/tool.real\n")
    write(root, "var/lib/dpkg/diversions", "/usr/bin/tool\n/usr/bin/tool.real\ndiverter\n")
    write(root, "/usr/bin/tool.real", b"tool as shipped, moved aside\n")
    write(root, "/usr/bin/tool", b"the diverter's wrapper\n")
    write(root, "/etc/tool.conf", b"edited=yes\n")
    write(root, "/usr/lib/x86_64/libthing.so.3", b"amd64 lib\n")
    write(root, "/usr/lib/i386/libthing.so.3", b"i386 lib\n")
    write(root, "/usr/bin/shared", b"shared\n")
    write(root, "/usr/bin/gone", b"left behind\n")
    (root / "usr/bin/tool-link").symlink_to("tool")
    return root


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def entries(root: Path, packages: list[str] | None, report: MakeReport) -> dict[str, bytes]:
    dl = make_from_dpkg(packages, root=root, report=report)
    assert dl.paths is not None
    return {p: dg for dg, p in zip(dl.digests, dl.paths, strict=True)}


def test_fake_root_tool(fake_root: Path) -> None:
    report = MakeReport()
    got = entries(fake_root, ["tool"], report)
    # the diverted file is hashed where the diversion put it; the conffile as it is now;
    # paths are the system's, not under the root; md5sums (which lies) is not read
    assert got == {
        "/usr/bin/tool.real": h(b"tool as shipped, moved aside\n"),
        "/etc/tool.conf": h(b"edited=yes\n"),
        "/usr/bin/shared": h(b"shared\n"),
    }
    assert report.missing == ["/usr/share/doc/tool/excluded"]
    assert report.skipped == [("/usr/bin/tool-link", "symbolic link (not followed)")]
    assert report.hashed == 3


def test_fake_root_diverter_keeps_its_own_file(fake_root: Path) -> None:
    got = entries(fake_root, ["diverter"], MakeReport())
    assert got["/usr/bin/tool"] == h(b"the diverter's wrapper\n")


def test_fake_root_multiarch_instances(fake_root: Path) -> None:
    dl = make_from_dpkg(["libthing"], root=fake_root)
    assert dl.source == "dpkg:libthing:amd64=2:3.4-5,libthing:i386=2:3.4-5"
    assert set(dl.digests) == {h(b"amd64 lib\n"), h(b"i386 lib\n"), h(b"shared\n")}
    only = make_from_dpkg(["libthing:i386"], root=fake_root)
    assert only.source == "dpkg:libthing=2:3.4-5"
    assert set(only.digests) == {h(b"i386 lib\n"), h(b"shared\n")}


def test_fake_root_all_packages(fake_root: Path) -> None:
    dl = make_from_dpkg(None, root=fake_root)
    assert dl.source == ("dpkg:diverter=7,libthing:amd64=2:3.4-5,libthing:i386=2:3.4-5,tool=1.0-1")
    assert h(b"left behind\n") not in dl  # "gone" has only its conffiles left
    assert len(dl) == 6


def test_fake_root_refusals(fake_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="package 'gone' is not installed"):
        make_from_dpkg(["gone"], root=fake_root)
    (fake_root / "var/lib/dpkg/info/tool.list").unlink()
    with pytest.raises(FileError, match=r"info/tool\.list: cannot read the file list of tool"):
        make_from_dpkg(["tool"], root=fake_root)
    with pytest.raises(FileError, match=r"status: cannot read dpkg's status"):
        make_from_dpkg(root=tmp_path / "empty")


def test_source_is_shortened_to_fit(fake_root: Path) -> None:
    status = fake_root / "var/lib/dpkg/status"
    extra = "".join(
        f"\nPackage: p{i:04d}-{'x' * 30}\nStatus: install ok installed\nArchitecture: all\n"
        f"Version: 1.{i}\n"
        for i in range(300)
    )
    status.write_text(status.read_text() + extra)
    for i in range(300):
        write(fake_root, f"var/lib/dpkg/info/p{i:04d}-{'x' * 30}.list", "")
    dl = make_from_dpkg(root=fake_root)
    assert len(dl.source.encode()) <= 4096
    assert dl.source.endswith(" more)")
    assert dl.source.startswith("dpkg:diverter=7,libthing")
