"""Fixtures for the verified loaders' system tests: small C programs, signed copies, keys.

The programs are compiled once per session with gcc (static, so no ELF loader is involved
unless a test asks for one); tests copy them into their own ``tmp_path`` and sign the copy.
Signatures go to the default store (``security.ima`` as root, ``user.ima`` otherwise).
Nothing outside ``tmp_path`` (and pytest's session temp dirs) is written: the system's
ELF loader is only ever *read* (copied) by the ``signed_ldso`` fixture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

import imaguard
from imaguard.loaders import PreparedExec, spawn_verified

IMAGUARD = Path(sys.executable).with_name("imaguard")
TIMEOUT = 60
SYSTEM_LDSO = "/lib64/ld-linux-x86-64.so.2"

MARKER = "UNSIGNED-MARKER"
"""What every unsigned variant prints: it must never appear in a verified run's output."""

HELLO_C = r"""
#include <string.h>
#include <unistd.h>
/* A fixed-size array: the two variants differ only in these bytes (same file size). */
static const char msg[32] = MSG;
int main(void) {
    write(1, msg, strlen(msg));
    write(1, "\n", 1);
    return 0;
}
"""

PROBE_C = r"""
/* Prints BANNER, then argc, argv and $PROBE_VAR as NUL-separated fields; when one of its
   arguments is /proc/self/fd/N (a script handed over by imaguard exec) or $PROBE_SCRIPT is
   set, prints that file's content too and exits with the number after "EXIT " in it.
   Otherwise: exit($PROBE_EXIT), or raise($PROBE_SIGNAL). */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    static char buf[65536];
    const char *script = getenv("PROBE_SCRIPT");
    const char *var = getenv("PROBE_VAR");
    int code = 0;
    printf("%s\n%d", BANNER, argc);
    fputc(0, stdout);
    for (int i = 0; i < argc; i++) {
        fputs(argv[i], stdout);
        fputc(0, stdout);
        if (!script && strncmp(argv[i], "/proc/self/fd/", 14) == 0) script = argv[i];
    }
    printf("ENV=%s", var ? var : "(unset)");
    fputc(0, stdout);
    if (script) {
        int fd = open(script, O_RDONLY);
        ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
        if (n < 0) { printf("SCRIPT-UNREADABLE"); fputc(0, stdout); return 99; }
        buf[n] = 0;
        printf("SCRIPT=%s", buf);
        fputc(0, stdout);
        const char *e = strstr(buf, "EXIT ");
        if (e) code = atoi(e + 5);
    }
    fflush(stdout);
    if (getenv("PROBE_SIGNAL")) raise(atoi(getenv("PROBE_SIGNAL")));
    if (getenv("PROBE_EXIT")) code = atoi(getenv("PROBE_EXIT"));
    return code;
}
"""


@dataclass(frozen=True)
class Programs:
    """The session's compiled (unsigned) programs."""

    signed_hello: Path
    """Prints SIGNED (tests sign their copy)."""
    unsigned_hello: Path
    """Prints UNSIGNED-MARKER: the same size as signed_hello."""
    probe: Path
    """Prints PROBE, argv, an env var and a handed-over script; see PROBE_C."""
    evil_probe: Path
    """The probe printing UNSIGNED-MARKER as its banner."""
    ldso_dir: Path
    """A session directory holding copies of the system loader (see signed_ldso)."""
    dyn_hello: Path
    """A dynamically linked hello whose PT_INTERP is ldso_dir/ld-signed.so."""
    dyn_hello_unsigned_loader: Path
    """The same, with PT_INTERP ldso_dir/ld-unsigned.so (never signed)."""


@dataclass(frozen=True)
class Probe:
    """What the probe printed."""

    banner: str
    argv: list[str]
    env: str
    script: str | None


def parse_probe(out: bytes) -> Probe:
    banner, _, rest = out.partition(b"\n")
    fields = rest.split(b"\0")
    n = int(fields[0])
    argv = [f.decode() for f in fields[1 : 1 + n]]
    env = fields[1 + n].decode()
    assert env.startswith("ENV="), out
    script = None
    if len(fields) > 2 + n and fields[2 + n].startswith(b"SCRIPT="):
        script = fields[2 + n][len(b"SCRIPT=") :].decode()
    return Probe(banner.decode(), argv, env[len("ENV=") :], script)


def _gcc(src: str, out: Path, *flags: str) -> Path:
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run(
        ["gcc", "-O2", *flags, "-o", str(out), str(c)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return out


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the loader tests compile small C programs")
    d = tmp_path_factory.mktemp("cprogs")
    signed = _gcc(HELLO_C, d / "hello-signed", "-static", '-DMSG="SIGNED"')
    unsigned = _gcc(HELLO_C, d / "hello-unsigned", "-static", f'-DMSG="{MARKER}"')
    assert signed.stat().st_size == unsigned.stat().st_size
    assert signed.read_bytes() != unsigned.read_bytes()
    probe = _gcc(PROBE_C, d / "probe", "-static", '-DBANNER="PROBE"')
    evil = _gcc(PROBE_C, d / "evil-probe", "-static", f'-DBANNER="{MARKER}"')
    ldso = d / "ld"
    ldso.mkdir()
    dyn = _gcc(
        HELLO_C, d / "dyn-hello", '-DMSG="SIGNED"', f"-Wl,--dynamic-linker={ldso}/ld-signed.so"
    )
    dyn_u = _gcc(
        HELLO_C, d / "dyn-hello-u", '-DMSG="SIGNED"', f"-Wl,--dynamic-linker={ldso}/ld-unsigned.so"
    )
    return Programs(signed, unsigned, probe, evil, ldso, dyn, dyn_u)


@pytest.fixture(scope="session")
def signed_ldso(programs: Programs, ec_key: imaguard.PrivateKey) -> Path:
    """Copies of the system's ELF loader (read, never modified): one signed, one not."""
    if not os.path.exists(SYSTEM_LDSO):
        pytest.skip(f"{SYSTEM_LDSO} is not here")
    good = programs.ldso_dir / "ld-signed.so"
    shutil.copyfile(SYSTEM_LDSO, good)
    good.chmod(0o755)
    imaguard.sign_file(good, ec_key, "sha256")
    bad = programs.ldso_dir / "ld-unsigned.so"
    shutil.copyfile(SYSTEM_LDSO, bad)
    bad.chmod(0o755)
    return good


@pytest.fixture
def ring_dir(keys_dir: dict[str, Path]) -> Path:
    """The trusted keyring directory (the ECDSA test key's cert.der)."""
    return keys_dir["ecdsa-p256"]


def install(
    src: Path, dest: Path, key: imaguard.PrivateKey | None = None, mode: int = 0o755
) -> Path:
    """Copy a program to ``dest`` (no xattrs copied), chmod it and sign it with ``key``."""
    shutil.copyfile(src, dest)
    dest.chmod(mode)
    if key is not None:
        imaguard.sign_file(dest, key, "sha256")
    return dest


def write_signed(path: Path, data: bytes, key: imaguard.PrivateKey, mode: int = 0o755) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    imaguard.sign_file(path, key, "sha256")
    return path


@contextlib.contextmanager
def stdout_into(fd: int) -> Iterator[None]:
    """Point this process's fd 1 at ``fd`` for a while (children spawned inherit it)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(fd, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def spawn_capture(
    prepared: PreparedExec, env: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    """``prepared.spawn()`` with the child's stdout captured: (exit status, stdout)."""
    out = os.memfd_create("loader-test-out")
    try:
        with stdout_into(out):
            pid = prepared.spawn(env)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), _read_all(out)
    finally:
        os.close(out)


def spawn_verified_capture(
    argv: Sequence[str],
    ring: imaguard.Keyring,
    *,
    env: Mapping[str, str] | None = None,
    mode: Literal["enforce", "log"] = "enforce",
) -> tuple[int, bytes]:
    """``imaguard.loaders.spawn_verified`` with the child's stdout captured."""
    out = os.memfd_create("loader-test-out")
    try:
        with stdout_into(out):
            code = spawn_verified(argv, ring, env=env, mode=mode)
        return code, _read_all(out)
    finally:
        os.close(out)


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def imaguard_exec(
    ring_dir: Path,
    *argv: str | os.PathLike[str],
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``imaguard exec --keyring RING [options] -- argv...`` as a child process."""
    r = subprocess.run(
        [
            str(IMAGUARD),
            "exec",
            "--keyring",
            str(ring_dir),
            *options,
            "--",
            *(os.fspath(a) for a in argv),
        ],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env=None if env is None else dict(env),
    )
    assert b"Traceback" not in r.stderr, r.stderr
    return r
