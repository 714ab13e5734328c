"""load_verified: a sealed memfd holding exactly the bytes that were verified."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import imaguard
from helpers.core import CONTENT, EVIL, TIMEOUT, edit_in_place_keep_mtime

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def test_returns_a_sealed_memfd_with_the_verified_bytes(
    signed: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    with imaguard.load_verified(signed, rsa_ring) as vf:
        assert isinstance(vf, imaguard.VerifiedFile)
        seals = fcntl.fcntl(vf.fd, fcntl.F_GET_SEALS)
        assert seals & SEALS == SEALS
        assert os.readlink(f"/proc/self/fd/{vf.fd}").startswith("/memfd:")
        assert bytes(vf.data) == CONTENT
        assert vf.read() == CONTENT
        assert os.pread(vf.fd, 4096, 0) == CONTENT
        assert vf.verdict.passed
        assert vf.verdict.key_id == rsa_key.key_id
        assert vf.verdict.target == str(signed)
        fd = vf.fd
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed on exit


def test_the_memfd_cannot_be_changed(signed: Path, rsa_ring: imaguard.Keyring) -> None:
    with imaguard.load_verified(signed, rsa_ring) as vf:
        with pytest.raises(PermissionError) as e:
            os.write(vf.fd, b"x")
        assert e.value.errno == errno.EPERM
        with pytest.raises(PermissionError):
            os.pwrite(vf.fd, EVIL, 0)
        with pytest.raises(PermissionError):
            os.ftruncate(vf.fd, 0)
        with pytest.raises(PermissionError):
            os.ftruncate(vf.fd, len(CONTENT) + 1)
        with pytest.raises(PermissionError):
            fcntl.fcntl(vf.fd, fcntl.F_ADD_SEALS, 0)  # F_SEAL_SEAL: no change to the seals
        # Reopening through /proc for writing does not help either.
        wfd = os.open(vf.path, os.O_WRONLY)
        try:
            with pytest.raises(PermissionError):
                os.write(wfd, EVIL)
        finally:
            os.close(wfd)
        assert bytes(vf.data) == CONTENT


def test_the_verified_copy_does_not_follow_later_changes_to_the_file(
    signed: Path, rsa_ring: imaguard.Keyring
) -> None:
    with imaguard.load_verified(signed, rsa_ring) as vf:
        edit_in_place_keep_mtime(signed, EVIL)
        assert bytes(vf.data) == CONTENT


def test_unsigned_file_raises_verification_error(
    make_file: Callable[..., Path], rsa_ring: imaguard.Keyring
) -> None:
    with pytest.raises(imaguard.VerificationError) as e:
        imaguard.load_verified(make_file(), rsa_ring)
    v = e.value.verdict
    assert isinstance(v, imaguard.Verdict)
    assert v.passed is False
    assert v.cause == "IMA-signature-required"


def test_tampered_file_raises_verification_error(signed: Path, rsa_ring: imaguard.Keyring) -> None:
    edit_in_place_keep_mtime(signed, EVIL)
    with pytest.raises(imaguard.VerificationError) as e:
        imaguard.load_verified(signed, rsa_ring)
    v = e.value.verdict
    assert isinstance(v, imaguard.Verdict)
    assert (v.status, v.cause) == (imaguard.Status.FAIL, "invalid-signature")


def test_wrong_key_raises_verification_error(signed: Path, ec_ring: imaguard.Keyring) -> None:
    with pytest.raises(imaguard.VerificationError) as e:
        imaguard.load_verified(signed, ec_ring)
    v = e.value.verdict
    assert isinstance(v, imaguard.Verdict)
    assert v.status == imaguard.Status.UNKNOWN_KEY
    assert v.cause == "invalid-signature"


def test_digest_only_value_is_not_enough_by_default(
    make_file: Callable[..., Path], rsa_ring: imaguard.Keyring
) -> None:
    prog = make_file()
    imaguard.store_digest(prog)
    with pytest.raises(imaguard.VerificationError) as e:
        imaguard.load_verified(prog, rsa_ring)
    assert getattr(e.value.verdict, "cause", None) == "IMA-signature-required"
    with imaguard.load_verified(prog, rsa_ring, require="any") as vf:
        assert bytes(vf.data) == CONTENT


def test_keyring_given_as_a_path(signed: Path, rsa_dir: Path) -> None:
    for ring in (rsa_dir / "cert.der", str(rsa_dir / "cert.pem"), rsa_dir):
        with imaguard.load_verified(signed, ring) as vf:
            assert vf.verdict.passed
    with pytest.raises(imaguard.KeyLoadError):
        imaguard.load_verified(signed, rsa_dir / "missing.der")


def test_sidecar_store(
    make_file: Callable[..., Path], rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    prog = make_file()
    imaguard.sign_file(prog, rsa_key, store="sigfile")
    assert Path(f"{prog}.sig").is_file()
    assert os.listxattr(prog) == [] or "security.ima" not in os.listxattr(prog)
    with imaguard.load_verified(prog, rsa_ring, store="sigfile") as vf:
        assert bytes(vf.data) == CONTENT
    with imaguard.load_verified(prog, rsa_ring, store=imaguard.SidecarStore()) as vf:
        assert vf.verdict.passed
    with pytest.raises(imaguard.VerificationError):
        imaguard.load_verified(prog, rsa_ring)  # security.ima is empty


def test_empty_file(
    make_file: Callable[..., Path], rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    prog = make_file("empty", b"")
    imaguard.sign_file(prog, rsa_key)
    with imaguard.load_verified(prog, rsa_ring) as vf:
        assert bytes(vf.data) == b""


def test_not_a_regular_file_is_an_imaguard_error(
    tmp_path: Path, rsa_ring: imaguard.Keyring
) -> None:
    with pytest.raises(imaguard.Error):
        imaguard.load_verified(tmp_path, rsa_ring)
    with pytest.raises(imaguard.Error):
        imaguard.load_verified(tmp_path / "missing", rsa_ring)


def test_the_memfd_runs_a_signed_script(
    make_file: Callable[..., Path], rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    script = make_file("hello.sh", b'#!/bin/sh\necho verified-run "$1"\n')
    imaguard.sign_file(script, rsa_key)
    with imaguard.load_verified(script, rsa_ring) as vf:
        r = subprocess.run(
            [vf.path, "arg"],
            pass_fds=(vf.fd,),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "verified-run arg\n"


def test_the_memfd_runs_a_signed_elf_binary(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    true = shutil.which("true")
    assert true is not None
    prog = tmp_path / "true"
    shutil.copyfile(true, prog)
    imaguard.sign_file(prog, rsa_key)
    with imaguard.load_verified(prog, rsa_ring) as vf:
        assert bytes(vf.data) == prog.read_bytes()
        r = subprocess.run([vf.path], pass_fds=(vf.fd,), timeout=TIMEOUT, check=False)
    assert r.returncode == 0
