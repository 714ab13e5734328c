"""``verified_open``: a reader over the verified copy, whatever happens to the file later."""

from __future__ import annotations

import fcntl
import io
import os
from pathlib import Path

import pytest

import imaguard
from imaguard.loaders import VerifiedReader, verified_open

CONFIG = b"[server]\nlisten = 127.0.0.1\nplugins = signed-only\n" * 100
EVIL = b"[server]\nlisten = 0.0.0.0\nplugins = anything-goes\n" * 100
assert len(CONFIG) == len(EVIL)  # an in-place rewrite of the same size


@pytest.fixture
def config(tmp_path: Path, ec_key: imaguard.PrivateKey) -> Path:
    p = tmp_path / "app.conf"
    p.write_bytes(CONFIG)
    imaguard.sign_file(p, ec_key, "sha256")
    return p


def test_reads_the_verified_bytes_even_if_the_file_is_rewritten(
    config: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    assert imaguard.verified_open is verified_open
    with verified_open(config, ec_ring) as f:
        assert isinstance(f, VerifiedReader)
        assert isinstance(f, io.BufferedReader)
        assert f.verdict.passed
        assert f.verdict.target == str(config)
        assert f.verdict.key_id == ec_key.key_id
        assert f.path == str(config)
        # name is the memfd's descriptor (an int, as for io.FileIO(fd)); it is a sealed memfd.
        fd = f.fileno()
        assert f.name == fd
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:imaguard:")
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE
        head = f.read(16)
        # Rewritten in place (same inode, keeps its value), truncated, then replaced:
        with open(config, "r+b") as w:
            w.write(EVIL)
        assert config.read_bytes().startswith(EVIL)
        os.truncate(config, 3)
        replacement = config.with_name("new")
        replacement.write_bytes(EVIL)
        os.rename(replacement, config)
        rest = f.read()
        assert head + rest == CONFIG
        f.seek(0)
        assert f.read() == CONFIG  # seekable, still the verified bytes
        assert f.readable()
        assert not f.writable()
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")


def test_lines_and_partial_reads(config: Path, ec_ring: imaguard.Keyring) -> None:
    with imaguard.verified_open(config, ec_ring) as f:
        assert f.readline() == b"[server]\n"
        assert f.read(6) == b"listen"
        assert list(f)[-1] == b"plugins = signed-only\n"


def test_unsigned_file_raises(tmp_path: Path, ec_ring: imaguard.Keyring) -> None:
    p = tmp_path / "unsigned.conf"
    p.write_bytes(CONFIG)
    with pytest.raises(imaguard.VerificationError) as e:
        verified_open(p, ec_ring)
    assert str(e.value) == f"{p}: no-xattr (IMA-signature-required) - no value stored for this file"


def test_tampered_file_raises(config: Path, ec_ring: imaguard.Keyring) -> None:
    with open(config, "ab") as f:
        f.write(b"listen = 0.0.0.0\n")
    with pytest.raises(imaguard.VerificationError, match=r"fail \(invalid-signature\)"):
        verified_open(config, ec_ring)


def test_key_not_in_the_ring_raises(
    config: Path, tmp_path: Path, keys_dir: dict[str, Path]
) -> None:
    other = imaguard.Keyring.load(keys_dir["rsa2048"] / "cert.der")
    with pytest.raises(imaguard.VerificationError, match="unknown-key"):
        verified_open(config, other)


def test_keyring_given_as_a_directory(config: Path, keys_dir: dict[str, Path]) -> None:
    with verified_open(config, keys_dir["ecdsa-p256"]) as f:
        assert f.read() == CONFIG
