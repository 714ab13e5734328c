"""A real Debian package installed and removed under enforcement, vouched for by a digest list.

The daemon watches a tmpfs this test mounts; its only policy appraises execs there with
``appraise_type=digestlist``, so a program runs only if a signed list in the daemon's trust
database holds its digest (nothing on the tmpfs is signed). The package (GNU ``hello``,
fetched with ``apt-get download``) is installed with ``dpkg --root`` into a root on that
tmpfs, after the APT hook (``scripts/apt-digestlist-hook``, fed the .deb path on its
standard input as apt's ``DPkg::Pre-Install-Pkgs`` does) has made, signed and loaded its
list. Safety: as every daemon test, only the test's tmpfs is marked; the daemon runs under
``timeout`` and is stopped by its PID.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import imaguard

from ..service.conftest import Daemon, cli, daemon_on_tmpfs, env, run

REPO = Path(__file__).resolve().parents[3]
HOOK = REPO / "scripts" / "apt-digestlist-hook"
TMPFS_MAGIC = "0x01021994"
PACKAGE = "hello"

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("deb")
    r = subprocess.run(
        ["apt-get", "download", PACKAGE],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = sorted(where.glob(f"{PACKAGE}_*.deb"))
    if r.returncode != 0 or not found:
        pytest.skip(f"apt-get download {PACKAGE} failed here: {r.stderr.strip()[-200:]}")
    return found[0]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_on_tmpfs(tmp_path, "64m") as d:
        mnt = d.mnt
        imaguard.generate_key("ecdsa-p256").write(tmp_path / "local")
        imaguard.generate_key("ecdsa-p256").write(tmp_path / "files")  # signs nothing here
        (tmp_path / "ring").mkdir()
        shutil.copy(tmp_path / "files" / "cert.der", tmp_path / "ring" / "cert.der")
        (tmp_path / "lists-ring").mkdir()
        shutil.copy(tmp_path / "local" / "cert.der", tmp_path / "lists-ring" / "cert.der")
        (tmp_path / "owners").mkdir()
        (tmp_path / "owners" / "packages.toml").write_text(
            'name = "packages"\nuids = [0]\ndigestlists = true\n'
        )
        d.config.write_text(
            f"""\
mode = "enforce"
watch = ["{mnt}"]
state = "{d.state}"
socket = "{d.sock}"
keyrings = ["{tmp_path / "ring"}"]
owners = "{tmp_path / "owners"}"
digestlist_keyrings = ["{tmp_path / "lists-ring"}"]

[[policy]]
name = "packages"
owner = "admin"
rules = "appraise func=BPRM_CHECK fsmagic={TMPFS_MAGIC} appraise_type=digestlist"
"""
        )
        d.start()
        yield d


def hook(d: Daemon, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    e = env()
    e["IMAGUARD_CMD"] = f"{sys.executable} -m imaguard"
    return subprocess.run(
        [
            sys.executable,
            str(HOOK),
            "--key",
            str(d.base / "local" / "private.pem"),
            "--state-dir",
            str(d.base / "apt-lists"),
            "--socket",
            str(d.sock),
            "--strict",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=e,
        check=False,
    )


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["dpkg", f"--root={root}", "--force-depends", "--no-triggers", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_install_and_remove_a_real_package_under_enforcement(daemon: Daemon, deb: Path) -> None:
    d = daemon
    root = d.mnt / "root"
    for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
        (root / sub).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    program = root / "usr" / "bin" / PACKAGE
    stray = d.mnt / "stray"
    shutil.copy("/bin/true", stray)
    assert run(stray) == 126  # nothing on the tmpfs is vouched for yet

    # apt's Pre-Install-Pkgs: the .deb path on standard input, before dpkg unpacks it
    r = hook(d, stdin=f"{deb}\n")
    assert r.returncode == 0, r.stdout + r.stderr
    lists = json.loads(cli("digestlist", "list", "--socket", str(d.sock), "--json").stdout)["lists"]
    assert [li["name"] for li in lists] == [f"deb:{PACKAGE}"]
    assert lists[0]["source"].startswith(f"deb:{PACKAGE}=")

    denied = d.status()["decisions"]["denied"]
    r = dpkg(root, "-i", str(deb))
    assert r.returncode == 0, r.stdout + r.stderr
    assert d.status()["decisions"]["denied"] == denied  # nothing the install did was refused
    assert program.is_file()
    out = subprocess.run([str(program)], capture_output=True, text=True, timeout=30, check=False)
    assert (out.returncode, out.stdout) == (0, "Hello, world!\n")  # no false denial

    # the package reinstalled (dpkg unpacks beside each file and renames it over) while a
    # loop runs the program: every exec sees the old or the new file, both vouched for
    results: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            results.append(run(program))

    runner = threading.Thread(target=loop)
    runner.start()
    try:
        time.sleep(0.2)
        r = dpkg(root, "-i", str(deb))
        time.sleep(0.2)
    finally:
        stop.set()
        runner.join(timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert results
    assert set(results) == {0}  # never denied during the upgrade
    assert d.status()["decisions"]["denied"] == denied
    assert run(stray) == 126  # still: the list vouches only for the package's files
    digest = hashlib.sha256(program.read_bytes()).hexdigest()
    found = cli("trust", "lookup", "--digest", digest, "--socket", str(d.sock), "--json")
    assert found.returncode == 0, found.stderr
    assert f"deb:{PACKAGE}" in found.stdout

    # an edit to an installed file is not vouched for any more
    copy = d.mnt / "hello-edited"
    copy.write_bytes(program.read_bytes() + b"\0")
    copy.chmod(0o755)
    assert run(copy) == 126

    # removal: dpkg removes the files, the hook the list; a copy of the old binary is refused
    kept = d.mnt / "hello-kept"
    shutil.copy(program, kept)
    assert run(kept) == 0
    r = dpkg(root, "-r", PACKAGE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not program.exists()
    r = hook(d, "--remove", PACKAGE)
    assert r.returncode == 0, r.stdout + r.stderr
    lists = json.loads(cli("digestlist", "list", "--socket", str(d.sock), "--json").stdout)["lists"]
    assert lists == []
    assert run(kept) == 126

    # every change is measured, and the log verifies
    log = cli("log", "show", "--state", str(d.state / "log"))
    names = [line.split()[-1] for line in log.stdout.splitlines()]
    assert f"imaguard:digestlist:deb:{PACKAGE}:add" in names
    assert f"imaguard:digestlist:deb:{PACKAGE}:remove" in names
    assert cli("log", "verify", "--state", str(d.state / "log")).returncode == 0
    audit = [r for r in d.audit() if r.get("type") == "DIGESTLIST_CHANGE"]
    assert [(r["op"], r["result"]) for r in audit] == [
        ("digestlist_add", "accepted"),
        ("digestlist_remove", "accepted"),
    ]
