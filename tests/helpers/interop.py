"""Fixtures for the interop tests: evmctl, openssl and the imaguard command, run for real.

The outside tools are independent oracles (evmctl from ima-evm-utils). Nothing here is
mocked: a missing tool fails every test loudly with the command that installs it
(``make test`` does), it never skips.

Verdict rules (evmctl 1.4, observed): evmctl exits 0 (ok), 1 (verification failed) or
125 (error), but a missing or unreadable certificate also ends in exit 1 ("unknown
keyid"), so a verdict reads the exit code *and* stderr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import imaguard
from helpers import IS_ROOT

KEY_TYPES = ("rsa2048", "ecdsa-p256")
SIGN_ALGOS = ("sha1", "sha256", "sha384", "sha512")
TIMEOUT = 30
"""Seconds any one outside command may take."""


_PACKAGES = {"evmctl": "ima-evm-utils", "openssl": "openssl", "getfattr": "attr"}

EVMCTL_OK = "verification is OK"
EVMCTL_FAILED = "verification failed"
EVMCTL_UNKNOWN_KEY = "unknown keyid"


@dataclass(frozen=True)
class Run:
    """One finished command."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode()

    def explain(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n"
            f"stdout: {self.stdout[:2000]!r}\nstderr: {self.stderr[-3000:]}"
        )


def _imaguard_command() -> list[str]:
    script = Path(sys.executable).parent / "imaguard"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "imaguard"]


class Tools:
    """Runs evmctl, openssl, getfattr and the imaguard command, each with a timeout."""

    def __init__(self) -> None:
        self.imaguard_cmd = _imaguard_command()

    # -- generic -----------------------------------------------------------------------

    def run(self, *args: str | os.PathLike[str], stdin: bytes | None = None) -> Run:
        argv = tuple(os.fspath(a) for a in args)
        try:
            proc = subprocess.run(
                argv, input=stdin, capture_output=True, timeout=TIMEOUT, check=False
            )
        except FileNotFoundError as e:
            pytest.fail(f"{argv[0]} is not installed ({e}); `make test` installs it")
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{' '.join(argv)} took more than {TIMEOUT} s: {e}")
        return Run(argv, proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))

    def checked(self, *args: str | os.PathLike[str], stdin: bytes | None = None) -> Run:
        r = self.run(*args, stdin=stdin)
        assert r.returncode == 0, r.explain()
        return r

    def imaguard(self, *args: str | os.PathLike[str]) -> Run:
        return self.run(*self.imaguard_cmd, *args)

    def openssl(self, *args: str | os.PathLike[str]) -> Run:
        return self.run("openssl", *args)

    # -- evmctl ------------------------------------------------------------------------

    def evmctl(self, *args: str | os.PathLike[str]) -> Run:
        return self.run("evmctl", *args)

    def evmctl_sign(
        self,
        path: Path,
        key: Path,
        algo: str,
        *,
        sigfile: bool = False,
        xattr_user: bool = False,
        dry_run: bool = False,
    ) -> bytes:
        """``evmctl ima_sign``; returns the value it printed on stdout (hex) as bytes."""
        opts = ["-a", algo, "--key", str(key)]
        if sigfile:
            opts.append("--sigfile")
        # evmctl sets the xattr even with --sigfile; unprivileged, let it go to user.ima
        # (a sigfile test reads only FILE.sig), so those tests need no root.
        if xattr_user or (sigfile and not IS_ROOT and not dry_run):
            opts.append("--xattr-user")
        if dry_run:
            opts.append("-n")
        r = self.checked("evmctl", "ima_sign", *opts, path)
        return _hex_value(r)

    def evmctl_hash(
        self, path: Path, algo: str, *, dry_run: bool = True, xattr_user: bool = False
    ) -> bytes:
        """``evmctl ima_hash``; returns the value it printed on stdout (hex) as bytes."""
        opts = ["-a", algo]
        if dry_run:
            opts.append("-n")
        if xattr_user:
            opts.append("--xattr-user")
        r = self.checked("evmctl", "ima_hash", *opts, path)
        return _hex_value(r)

    def evmctl_verify(
        self, path: Path, cert_der: Path, *, sigfile: bool = False, xattr_user: bool = False
    ) -> Run:
        opts = ["--key", str(cert_der)]
        if sigfile:
            opts.append("--sigfile")
        if xattr_user:
            opts.append("--xattr-user")
        return self.evmctl("-v", "ima_verify", *opts, path)

    def assert_evmctl_accepts(self, path: Path, cert_der: Path, **kw: bool) -> Run:
        r = self.evmctl_verify(path, cert_der, **kw)
        assert r.returncode == 0, "evmctl rejected the value:\n" + r.explain()
        assert EVMCTL_OK in r.stderr, r.explain()
        assert EVMCTL_FAILED not in r.stderr, r.explain()
        assert EVMCTL_UNKNOWN_KEY not in r.stderr, r.explain()
        return r

    def assert_evmctl_rejects_content(self, path: Path, cert_der: Path, **kw: bool) -> Run:
        """evmctl found the key but the signature does not match the content: exit 1."""
        r = self.evmctl_verify(path, cert_der, **kw)
        assert r.returncode == 1, "evmctl did not report a failed verification:\n" + r.explain()
        assert EVMCTL_FAILED in r.stderr, r.explain()
        assert EVMCTL_UNKNOWN_KEY not in r.stderr, r.explain()
        assert EVMCTL_OK not in r.stderr, r.explain()
        return r

    @staticmethod
    def tamper(path: Path) -> None:
        """Change one byte of the content in place (the xattrs and any .sig stay)."""
        with open(path, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 0x01]))

    # -- xattrs ------------------------------------------------------------------------

    def getfattr(self, path: Path, name: str) -> bytes | None:
        """The xattr as getfattr -e hex prints it; None when the file has none."""
        r = self.run("getfattr", "--absolute-names", "-n", name, "-e", "hex", path)
        if r.returncode != 0:
            assert "No such attribute" in r.stderr, r.explain()
            return None
        for line in r.out.splitlines():
            if line.startswith(f"{name}=0x"):
                return bytes.fromhex(line.split("=0x", 1)[1])
        pytest.fail("getfattr printed no hex value:\n" + r.explain())


def _hex_value(r: Run) -> bytes:
    lines = [line.strip() for line in r.out.splitlines() if line.strip()]
    assert len(lines) == 1, "expected one hex line on stdout:\n" + r.explain()
    return bytes.fromhex(lines[0].lower())


@dataclass(frozen=True)
class KeyFiles:
    """A signing key's files, as evmctl and openssl read them."""

    key_type: str
    private_pem: Path
    cert_pem: Path
    cert_der: Path
    pub_pem: Path

    @property
    def ring(self) -> imaguard.Keyring:
        return imaguard.Keyring.load(self.cert_der)

    @property
    def is_rsa(self) -> bool:
        return self.key_type.startswith("rsa")


def content_for(label: str, size: int) -> bytes:
    """Deterministic content of ``size`` bytes (differs per label)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{label}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@pytest.fixture(scope="session")
def tools() -> Tools:
    missing = [f"{t} (package {p})" for t, p in _PACKAGES.items() if shutil.which(t) is None]
    if missing:
        pytest.fail(
            "interop tests need outside tools that are missing: "
            + ", ".join(missing)
            + ". Run `make test` (it installs them as root) or "
            "`apt-get install -y ima-evm-utils attr openssl xxd`.",
            pytrace=False,
        )
    t = Tools()
    version = t.evmctl("--version")
    assert version.returncode == 0, version.explain()
    return t


@pytest.fixture(scope="session")
def interop_keys(
    tools: Tools, keys_dir: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, KeyFiles]:
    """The shared generated keys of KEY_TYPES, plus pub.pem made by openssl.

    pub.pem goes to a directory of its own: the shared key directories stay as made.
    """
    out: dict[str, KeyFiles] = {}
    pubs = tmp_path_factory.mktemp("interop-pub")
    for key_type in KEY_TYPES:
        d = keys_dir[key_type]
        pub = pubs / f"{key_type}.pem"
        r = tools.checked("openssl", "x509", "-in", d / "cert.pem", "-pubkey", "-noout")
        pub.write_bytes(r.stdout)
        out[key_type] = KeyFiles(key_type, d / "private.pem", d / "cert.pem", d / "cert.der", pub)
    return out


@pytest.fixture(params=KEY_TYPES)
def key_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=SIGN_ALGOS)
def algo(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def signer(interop_keys: dict[str, KeyFiles], key_type: str) -> KeyFiles:
    return interop_keys[key_type]


@pytest.fixture
def sample(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A 10 KiB file with content unique to the test."""
    path = tmp_path / "sample.bin"
    path.write_bytes(content_for(request.node.nodeid, 10 * 1024 + 7))
    return path


@pytest.fixture
def make_file(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str, int], Path]:
    """Factory: ``make_file(name, size)`` writes deterministic content into tmp_path/name."""

    def make(name: str, size: int) -> Path:
        path = tmp_path / name
        path.write_bytes(content_for(f"{request.node.nodeid}/{name}", size))
        return path

    return make


@pytest.fixture
def root_only() -> None:
    """Tests that write or read security.ima need CAP_SYS_ADMIN."""
    if not IS_ROOT:
        pytest.skip("writing security.ima needs root (CAP_SYS_ADMIN); `make test` runs as root")
