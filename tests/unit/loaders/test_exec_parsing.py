"""``imaguard.loaders._exec``: #! parsing, PT_INTERP extraction, and prepare_exec's refusals.

No program is run here: ``prepare_exec`` only verifies into memfds and builds the argv.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import imaguard
from imaguard.appraise import Verdict
from imaguard.errors import FileError, UsageError
from imaguard.loaders import ExecRefused, parse_shebang, prepare_exec
from imaguard.loaders._exec import MAX_NESTING, SHEBANG_MAX, _interp_of_elf

TRUE = shutil.which("true") or "/bin/true"

# --- parse_shebang ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"#!/bin/sh\necho hi\n", ("/bin/sh", None)),
        (b"#!/bin/sh", ("/bin/sh", None)),  # no newline at all: the whole (short) file
        (b"#! /bin/sh  \n", ("/bin/sh", None)),  # spaces around the interpreter
        (b"#!/usr/bin/env python3\n", ("/usr/bin/env", "python3")),
        # One optional argument: everything after the interpreter, spaces kept inside.
        (b"#!/usr/bin/env -S python3 -u  -X dev\n", ("/usr/bin/env", "-S python3 -u  -X dev")),
        (b"#!/bin/interp   arg with spaces   \n", ("/bin/interp", "arg with spaces")),
        # Tabs separate like spaces.
        (b"#!\t/bin/interp\t-x\t\n", ("/bin/interp", "-x")),
        (b"#!/bin/interp\t \t-x\n", ("/bin/interp", "-x")),
        (b"#!/bin/sh\r\n", ("/bin/sh\r", None)),  # a CR is part of the name (as the kernel)
        ("#!/opt/ünï/interp ärg\n".encode(), ("/opt/ünï/interp", "ärg")),
    ],
)
def test_parse_shebang(data: bytes, expected: tuple[str, str | None]) -> None:
    assert parse_shebang(data, "script") == expected


@pytest.mark.parametrize("line", [b"#!", b"#!\n", b"#!   \n", b"#!\t \t\nbody\n"])
def test_shebang_without_interpreter_is_refused(line: bytes) -> None:
    with pytest.raises(ExecRefused, match=r"^s: the #! line names no interpreter$"):
        parse_shebang(line, "s")


def test_shebang_exactly_at_the_limit() -> None:
    interp = b"/" + b"i" * (SHEBANG_MAX - 4)  # "#!" + interp + "\n" == 256 bytes
    line = b"#!" + interp + b"\n"
    assert len(line) == SHEBANG_MAX == 256
    assert parse_shebang(line + b"body\n", "s") == (interp.decode(), None)
    # A whole file of exactly 256 bytes with no newline is a complete line too.
    assert parse_shebang(b"#!" + interp + b"x", "s") == (interp.decode() + "x", None)


def test_shebang_longer_than_the_limit_is_refused() -> None:
    interp = b"/" + b"i" * (SHEBANG_MAX - 3)  # the newline is byte 257
    line = b"#!" + interp + b"\n"
    assert len(line) == SHEBANG_MAX + 1
    with pytest.raises(ExecRefused, match=r"^s: the #! line is longer than 256 bytes$"):
        parse_shebang(line + b"body\n", "s")
    with pytest.raises(ExecRefused, match="longer than 256 bytes"):
        parse_shebang(b"#!/bin/sh " + b"a" * 300, "s")  # no newline, file longer


def test_the_error_is_a_verification_error() -> None:
    with pytest.raises(imaguard.VerificationError):
        parse_shebang(b"#!\n", "s")


# --- _interp_of_elf -------------------------------------------------------------------------


def _elf(bits: int, endian: str, interp: bytes | None, *, phdrs_before: int = 1) -> bytes:
    """A minimal ELF: a header, ``phdrs_before`` PT_LOAD headers, then PT_INTERP if asked."""
    e = "<" if endian == "little" else ">"
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if endian == "little" else 2, 1])
    ident = ident.ljust(16, b"\0")
    ehsize, phentsize = (64, 56) if bits == 64 else (52, 32)
    nph = phdrs_before + (interp is not None)
    phoff = ehsize
    data_off = phoff + nph * phentsize
    w = "Q" if bits == 64 else "I"
    header = ident + struct.pack(
        f"{e}HHI{w}{w}{w}IHHHHHH", 2, 62, 1, 0, phoff, 0, 0, ehsize, phentsize, nph, 0, 0, 0
    )
    assert len(header) == ehsize

    def phdr(p_type: int, offset: int, size: int) -> bytes:
        if bits == 64:
            return struct.pack(f"{e}IIQQQQQQ", p_type, 4, offset, 0, 0, size, size, 1)
        return struct.pack(f"{e}IIIIIIII", p_type, offset, 0, 0, size, size, 4, 1)

    table = b"".join(phdr(1, 0, data_off) for _ in range(phdrs_before))
    payload = b""
    if interp is not None:
        table += phdr(3, data_off, len(interp) + 1)
        payload = interp + b"\0"
    return header + table + payload


def _fd(tmp_path: Path, data: bytes) -> int:
    p = tmp_path / "elf"
    p.write_bytes(data)
    return os.open(p, os.O_RDONLY)


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("before", [0, 1, 5])
def test_interp_of_synthetic_elf(tmp_path: Path, bits: int, endian: str, before: int) -> None:
    fd = _fd(tmp_path, _elf(bits, endian, b"/opt/loader/ld.so.1", phdrs_before=before))
    try:
        assert _interp_of_elf(fd) == "/opt/loader/ld.so.1"
    finally:
        os.close(fd)
    fd = _fd(tmp_path, _elf(bits, endian, None, phdrs_before=before))
    try:
        assert _interp_of_elf(fd) is None  # no PT_INTERP: static
    finally:
        os.close(fd)


def test_interp_of_the_system_true() -> None:
    fd = os.open(TRUE, os.O_RDONLY)
    try:
        loader = _interp_of_elf(fd)
    finally:
        os.close(fd)
    assert loader is not None
    assert loader.startswith("/")
    assert "ld" in os.path.basename(loader)
    if shutil.which("readelf"):
        r = subprocess.run(["readelf", "-l", TRUE], capture_output=True, text=True, check=True)
        assert f"[Requesting program interpreter: {loader}]" in r.stdout


def test_interp_of_a_static_binary(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot build a static binary")
    src = tmp_path / "s.c"
    src.write_text("int main(void) { return 0; }\n")
    out = tmp_path / "static"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(src)], check=True, timeout=60)
    fd = os.open(out, os.O_RDONLY)
    try:
        assert os.pread(fd, 4, 0) == b"\x7fELF"
        assert _interp_of_elf(fd) is None
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"#!/bin/sh\necho not an ELF\n",
        b"\x7fELF",  # too short for a header
        b"MZ" + bytes(200),
        _elf(64, "little", b"/x")[:64],  # header only: the program headers are missing
        _elf(64, "little", b"/x").replace(b"/x\0", b"\0\0\0"),  # empty interpreter
    ],
)
def test_interp_of_non_elf_or_broken_elf_is_none(tmp_path: Path, data: bytes) -> None:
    fd = _fd(tmp_path, data)
    try:
        assert _interp_of_elf(fd) is None
    finally:
        os.close(fd)


# --- prepare_exec refusals -------------------------------------------------------------------


@pytest.fixture
def true_copy(tmp_path: Path, ec_key: imaguard.PrivateKey) -> Path:
    """A signed copy of /bin/true (dynamic: prepared with verify_loader=False)."""
    p = tmp_path / "true"
    shutil.copyfile(TRUE, p)
    p.chmod(0o755)
    imaguard.sign_file(p, ec_key, "sha256")
    return p


def _chain(tmp_path: Path, elf: Path, n: int, key: imaguard.PrivateKey) -> list[Path]:
    """n signed scripts: s1 runs under elf, s2 under s1, ...; returns [s1, ..., sn]."""
    out: list[Path] = []
    prev = elf
    for i in range(1, n + 1):
        s = tmp_path / f"s{i}"
        s.write_bytes(f"#!{prev}\n".encode())
        s.chmod(0o755)
        imaguard.sign_file(s, key, "sha256")
        out.append(s)
        prev = s
    return out


def test_nesting_up_to_the_limit(
    tmp_path: Path, true_copy: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    scripts = _chain(tmp_path, true_copy, MAX_NESTING, ec_key)
    assert MAX_NESTING == 5
    with prepare_exec([str(scripts[-1]), "arg"], ec_ring, verify_loader=False) as prepared:
        assert [v.target for v in prepared.checked] == [
            *map(str, reversed(scripts)),
            str(true_copy),
        ]
        assert len(prepared.pass_fds) == MAX_NESTING
        # argv: the ELF, then each script's memfd innermost first, then the arguments.
        assert prepared.argv == [
            str(true_copy),
            *(f"/proc/self/fd/{fd}" for fd in reversed(prepared.pass_fds)),
            "arg",
        ]
        for fd, script in zip(prepared.pass_fds, reversed(scripts), strict=True):
            assert os.pread(fd, 4096, 0) == script.read_bytes()


def test_six_nested_scripts_are_refused(
    tmp_path: Path, true_copy: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    scripts = _chain(tmp_path, true_copy, MAX_NESTING + 1, ec_key)
    with pytest.raises(ExecRefused, match=rf"^{scripts[-1]}: more than 5 nested #! interpreters$"):
        prepare_exec([str(scripts[-1])], ec_ring, verify_loader=False)


def test_neither_elf_nor_script_is_refused(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    p = tmp_path / "data"
    p.write_bytes(b"just some signed bytes\n")
    p.chmod(0o755)
    imaguard.sign_file(p, ec_key, "sha256")
    with pytest.raises(ExecRefused, match=rf"^{p}: neither an ELF program nor a #! script$"):
        prepare_exec([str(p)], ec_ring)
    # As an interpreter too.
    s = tmp_path / "script"
    s.write_bytes(f"#!{p}\n".encode())
    imaguard.sign_file(s, ec_key, "sha256")
    with pytest.raises(ExecRefused, match=rf"^{p}: neither an ELF program nor a #! script$"):
        prepare_exec([str(s)], ec_ring)


def test_loader_is_verified_unless_trusted(true_copy: Path, ec_ring: imaguard.Keyring) -> None:
    fd = os.open(TRUE, os.O_RDONLY)
    try:
        loader = _interp_of_elf(fd)
    finally:
        os.close(fd)
    with pytest.raises(ExecRefused, match=rf"^{loader}: no-xattr \(IMA-signature-required\)"):
        prepare_exec([str(true_copy)], ec_ring)
    with prepare_exec([str(true_copy)], ec_ring, verify_loader=False) as prepared:
        assert [v.target for v in prepared.checked] == [str(true_copy)]
        assert prepared.argv == [str(true_copy)]
        assert prepared.pass_fds == []
        assert os.readlink(f"/proc/self/fd/{prepared.exec_fd}").startswith("/memfd:imaguard:")
        fd = prepared.exec_fd
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed with the PreparedExec


def test_program_not_found_in_path(
    tmp_path: Path, ec_ring: imaguard.Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileError, match="not found in \\$PATH"):
        prepare_exec(["imaguard-no-such-program"], ec_ring)


def test_program_found_in_path(
    true_copy: Path, ec_ring: imaguard.Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(true_copy.parent))
    with prepare_exec(["true", "x"], ec_ring, verify_loader=False) as prepared:
        assert prepared.program == str(true_copy)
        assert prepared.argv == ["true", "x"]  # argv[0] as given


def test_missing_path_is_a_file_error(tmp_path: Path, ec_ring: imaguard.Keyring) -> None:
    with pytest.raises(FileError):
        prepare_exec([str(tmp_path / "missing")], ec_ring)


def test_usage_errors(true_copy: Path, ec_ring: imaguard.Keyring) -> None:
    with pytest.raises(UsageError, match="no program given"):
        prepare_exec([], ec_ring)
    with pytest.raises(UsageError, match="mode must be enforce or log"):
        prepare_exec([str(true_copy)], ec_ring, mode="fix")  # type: ignore[arg-type]


def test_unsigned_program_is_refused_with_its_verdict(
    tmp_path: Path, ec_ring: imaguard.Keyring
) -> None:
    p = tmp_path / "true"
    shutil.copyfile(TRUE, p)
    p.chmod(0o755)
    with pytest.raises(ExecRefused) as e:
        prepare_exec([str(p)], ec_ring, verify_loader=False)
    verdict = e.value.verdict
    assert isinstance(verdict, Verdict)
    assert verdict.target == str(p)
    assert verdict.cause == "IMA-signature-required"
    assert str(e.value) == f"{p}: no-xattr (IMA-signature-required) - no value stored for this file"


def test_log_mode_collects_failures(tmp_path: Path, ec_ring: imaguard.Keyring) -> None:
    p = tmp_path / "true"
    shutil.copyfile(TRUE, p)
    p.chmod(0o755)
    with prepare_exec([str(p)], ec_ring, mode="log") as prepared:
        assert prepared.failures[0].startswith(f"{p}: no-xattr (IMA-signature-required)")
        # The system loader is not signed either: reported, not refused.
        assert len(prepared.failures) == 2
        assert [v.passed for v in prepared.checked] == [False, False]
