"""Shared fixtures: generated keys (one per type, made once per run) and scratch filesystems."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import imaguard
from helpers import IS_ROOT
from imaguard.crypto._keygen import GeneratedKey


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``root`` are skipped, with their reason, when the suite is not run as root."""
    if IS_ROOT:
        return
    for item in items:
        marker = item.get_closest_marker("root")
        if marker is not None:
            why = marker.kwargs.get("reason", "needs root")
            item.add_marker(pytest.mark.skip(reason=f"{why} (run as root)"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """imaguard's CLI points the imaguard logger at the (captured) stderr; undo that."""
    logger = logging.getLogger("imaguard")
    handlers, level = logger.handlers[:], logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One directory per key type with private.pem, cert.pem and cert.der."""
    base = tmp_path_factory.mktemp("keys")
    out: dict[str, Path] = {}
    for key_type in imaguard.crypto.KEY_TYPES:
        d = base / key_type
        imaguard.generate_key(key_type).write(d)
        out[key_type] = d
    return out


@pytest.fixture(scope="session")
def rsa_key(keys_dir: dict[str, Path]) -> imaguard.PrivateKey:
    return imaguard.load_private_key(keys_dir["rsa2048"] / "private.pem")


@pytest.fixture(scope="session")
def ec_key(keys_dir: dict[str, Path]) -> imaguard.PrivateKey:
    return imaguard.load_private_key(keys_dir["ecdsa-p256"] / "private.pem")


@pytest.fixture(scope="session")
def rsa_ring(keys_dir: dict[str, Path]) -> imaguard.Keyring:
    return imaguard.Keyring.load(keys_dir["rsa2048"] / "cert.der")


@pytest.fixture(scope="session")
def ec_ring(keys_dir: dict[str, Path]) -> imaguard.Keyring:
    return imaguard.Keyring.load(keys_dir["ecdsa-p256"] / "cert.der")


@pytest.fixture(scope="session")
def generated_rsa() -> GeneratedKey:
    return imaguard.generate_key("rsa2048")


@pytest.fixture
def user_store() -> imaguard.SignatureStore:
    """user.ima: works unprivileged on ext4 and tmpfs (Linux >= 6.6)."""
    return imaguard.XattrStore("user.ima")


@contextlib.contextmanager
def _mount(fstype: str, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", fstype, fstype, str(where)], check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def _can_mount() -> bool:
    return IS_ROOT and shutil.which("mount") is not None


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A private ramfs mount: a filesystem with no xattr support at all (root only)."""
    if not _can_mount():
        pytest.skip("needs root to mount a ramfs (a filesystem without xattrs)")
    try:
        with _mount("ramfs", tmp_path / "ramfs") as p:
            yield p
    except subprocess.CalledProcessError as e:
        pytest.skip(f"mounting ramfs is not permitted here: {e.stderr!r}")
