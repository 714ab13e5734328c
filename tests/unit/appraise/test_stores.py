"""Signature stores: security.ima / user.ima xattrs, FILE.sig sidecars, the memory double."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import imaguard
from helpers import IS_ROOT, needs_root
from imaguard import Status
from imaguard.appraise import _files as files
from imaguard.appraise import store_for
from imaguard.appraise._sigstore import MAX_VALUE_SIZE, default_store

CONTENT = b"payload\n" * 100
VALUE = b"\x04\x04" + bytes(range(32))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    p = tmp_path / "file"
    p.write_bytes(CONTENT)
    return p


def _in_thread(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the call hung"
    if "error" in box:
        raise box["error"]
    return box.get("result")


# --- xattr stores -----------------------------------------------------------------


@pytest.mark.parametrize("attribute", [pytest.param("security.ima", marks=needs_root), "user.ima"])
def test_xattr_store_via_descriptor(target: Path, attribute: str) -> None:
    store = imaguard.XattrStore(attribute)
    fd = os.open(target, os.O_RDONLY)
    try:
        with files.open_target(fd) as ref:
            assert store.read(ref) is None
            store.write(ref, VALUE)
            assert store.read(ref) == VALUE
            store.write(ref, VALUE[:-1])  # replaced, not appended
            assert store.read(ref) == VALUE[:-1]
    finally:
        os.close(fd)
    assert os.getxattr(target, attribute) == VALUE[:-1]
    with files.open_target(target) as ref:
        assert store.read(ref) == VALUE[:-1]


def test_xattr_store_names() -> None:
    assert imaguard.XattrStore().attribute == "security.ima"
    assert imaguard.XattrStore().name == "xattr"
    assert imaguard.XattrStore("user.ima").name == "user.ima"


@needs_root
def test_security_and_user_stores_are_separate(target: Path) -> None:
    sec = imaguard.XattrStore("security.ima")
    usr = imaguard.XattrStore("user.ima")
    with files.open_target(target) as ref:
        sec.write(ref, VALUE)
        assert usr.read(ref) is None
        usr.write(ref, b"\x01" + bytes(20))
        assert sec.read(ref) == VALUE


def test_xattr_store_value_from_outside(target: Path) -> None:
    os.setxattr(target, "user.ima", b"\x03\x02")
    with files.open_target(target) as ref:
        assert imaguard.XattrStore("user.ima").read(ref) == b"\x03\x02"


# --- sidecar store -----------------------------------------------------------------


def test_sidecar_write_and_read(target: Path) -> None:
    store = imaguard.SidecarStore()
    assert store.name == "sigfile"
    with files.open_target(target) as ref:
        assert store.read(ref) is None
        store.write(ref, VALUE)
        assert store.read(ref) == VALUE
    sig = Path(f"{target}.sig")
    assert sig.read_bytes() == VALUE
    assert stat.S_ISREG(sig.stat().st_mode)
    # Only the file and its sidecar: no temporary file left behind.
    assert sorted(p.name for p in target.parent.iterdir()) == ["file", "file.sig"]
    # The file itself is untouched and carries no xattr.
    assert target.read_bytes() == CONTENT
    assert "user.ima" not in os.listxattr(target)


def test_sidecar_replaces_existing_sig_atomically(target: Path) -> None:
    store = imaguard.SidecarStore()
    sig = Path(f"{target}.sig")
    sig.write_bytes(b"old value that is longer than the new one" * 10)
    old_ino = sig.stat().st_ino
    # A reader holding the old file keeps seeing the old bytes: the new value arrives
    # by rename, never by rewriting the old file in place.
    with sig.open("rb") as old_reader:
        with files.open_target(target) as ref:
            store.write(ref, VALUE)
        assert old_reader.read().startswith(b"old value")
    assert sig.read_bytes() == VALUE
    assert sig.stat().st_ino != old_ino
    assert sorted(p.name for p in target.parent.iterdir()) == ["file", "file.sig"]


def test_sidecar_sign_and_appraise(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    value = imaguard.sign_file(target, rsa_key, store="sigfile")
    assert Path(f"{target}.sig").read_bytes() == value.serialize()
    assert "user.ima" not in os.listxattr(target)
    v = imaguard.appraise(target, rsa_ring, store="sigfile")
    assert v.status is Status.PASS
    assert imaguard.signature_info(target, store="sigfile").store == "sigfile"
    # A corrupted sidecar fails, it does not raise.
    Path(f"{target}.sig").write_bytes(b"\x09garbage")
    v = imaguard.appraise(target, rsa_ring, store="sigfile")
    assert (v.status, v.cause) == (Status.UNKNOWN, "unknown-ima-data")


def test_sidecar_refuses_a_descriptor(target: Path, rsa_key: imaguard.PrivateKey) -> None:
    store = imaguard.SidecarStore()
    fd = os.open(target, os.O_RDONLY)
    try:
        with files.open_target(fd) as ref:
            with pytest.raises(imaguard.StoreError, match="descriptor"):
                store.read(ref)
            with pytest.raises(imaguard.StoreError, match="descriptor"):
                store.write(ref, VALUE)
        with pytest.raises(imaguard.StoreError):
            imaguard.sign_file(fd, rsa_key, store=store)
    finally:
        os.close(fd)
    assert sorted(p.name for p in target.parent.iterdir()) == ["file"]


def test_sidecar_appraise_descriptor_is_unknown(target: Path, rsa_ring: imaguard.Keyring) -> None:
    fd = os.open(target, os.O_RDONLY)
    try:
        v = imaguard.appraise(fd, rsa_ring, store="sigfile")
    finally:
        os.close(fd)
    assert v.status is Status.UNKNOWN
    assert "descriptor" in v.detail


def test_sidecar_that_is_a_fifo_is_refused_without_hanging(target: Path) -> None:
    os.mkfifo(f"{target}.sig")
    store = imaguard.SidecarStore()

    def read() -> bytes | None:
        with files.open_target(target) as ref:
            return store.read(ref)

    with pytest.raises(imaguard.StoreError, match="not a regular file"):
        _in_thread(read)


def test_sidecar_that_is_a_fifo_appraises_unknown(target: Path, rsa_ring: imaguard.Keyring) -> None:
    os.mkfifo(f"{target}.sig")
    v = _in_thread(lambda: imaguard.appraise(target, rsa_ring, store="sigfile"))
    assert v.status is Status.UNKNOWN
    assert not v.passed


def test_sidecar_that_is_a_directory_is_refused(target: Path) -> None:
    Path(f"{target}.sig").mkdir()
    store = imaguard.SidecarStore()
    with files.open_target(target) as ref:
        with pytest.raises(imaguard.StoreError, match="not a regular file"):
            store.read(ref)
        with pytest.raises(imaguard.StoreError) as exc:
            store.write(ref, VALUE)
    assert f"{target}.sig" in str(exc.value)
    assert Path(f"{target}.sig").is_dir()
    # The failed write left no temporary file.
    assert sorted(p.name for p in target.parent.iterdir()) == ["file", "file.sig"]


def test_sidecar_too_large_is_refused(target: Path) -> None:
    sig = Path(f"{target}.sig")
    sig.write_bytes(b"\x03" * (MAX_VALUE_SIZE + 1))
    store = imaguard.SidecarStore()
    with files.open_target(target) as ref:
        with pytest.raises(imaguard.StoreError, match="at most"):
            store.read(ref)
        # The limit itself is accepted.
        sig.write_bytes(b"\x03" * MAX_VALUE_SIZE)
        assert store.read(ref) == b"\x03" * MAX_VALUE_SIZE
    assert MAX_VALUE_SIZE == 64 * 1024


def test_sidecar_too_large_appraises_unknown(target: Path, rsa_ring: imaguard.Keyring) -> None:
    Path(f"{target}.sig").write_bytes(bytes(MAX_VALUE_SIZE + 100))
    v = imaguard.appraise(target, rsa_ring, store="sigfile")
    assert v.status is Status.UNKNOWN
    assert v.detail


def test_sidecar_for_a_missing_file(tmp_path: Path, rsa_ring: imaguard.Keyring) -> None:
    # A .sig without its file: the file is what is missing.
    (tmp_path / "gone.sig").write_bytes(VALUE)
    v = imaguard.appraise(tmp_path / "gone", rsa_ring, store="sigfile")
    assert v.status is Status.UNKNOWN
    assert "No such file" in v.detail


# --- memory store ------------------------------------------------------------------


def test_memory_store(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    store = imaguard.MemoryStore()
    assert store.name == "memory"
    with files.open_target(target) as ref:
        assert store.read(ref) is None
    value = imaguard.sign_file(target, rsa_key, store=store)
    assert store.values == {str(target): value.serialize()}
    assert imaguard.appraise(target, rsa_ring, store=store).passed
    # Nothing touched the file system.
    assert "user.ima" not in os.listxattr(target)
    assert not Path(f"{target}.sig").exists()
    # Initial values are copied, not shared.
    initial = {str(target): b"\x09"}
    other = imaguard.MemoryStore(initial)
    assert imaguard.appraise(target, rsa_ring, store=other).cause == "unknown-ima-data"
    other.values.clear()
    assert initial == {str(target): b"\x09"}


def test_memory_store_by_descriptor(target: Path) -> None:
    store = imaguard.MemoryStore()
    fd = os.open(target, os.O_RDONLY)
    try:
        with files.open_target(fd) as ref:
            store.write(ref, bytearray(VALUE))  # type: ignore[arg-type]
            assert store.read(ref) == VALUE
            assert isinstance(store.read(ref), bytes)
        assert store.values == {f"<fd {fd}>": VALUE}
    finally:
        os.close(fd)


def test_a_store_of_ones_own(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    class Recorder:
        name = "recorder"

        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []
            self.value: bytes | None = None

        def read(self, ref: files.FileRef) -> bytes | None:
            self.calls.append(("read", ref.name))
            return self.value

        def write(self, ref: files.FileRef, value: bytes) -> None:
            self.calls.append(("write", ref.name))
            self.value = value

    rec = Recorder()
    imaguard.sign_file(target, rsa_key, store=rec)
    assert imaguard.appraise(target, rsa_ring, store=rec).passed
    assert rec.calls == [("write", str(target)), ("read", str(target))]


# --- store_for ---------------------------------------------------------------------


def test_store_for_names() -> None:
    x = store_for("xattr")
    assert isinstance(x, imaguard.XattrStore)
    assert x.attribute == "security.ima"
    u = store_for("user-xattr")
    assert isinstance(u, imaguard.XattrStore)
    assert u.attribute == "user.ima"
    assert isinstance(store_for("sigfile"), imaguard.SidecarStore)
    d = store_for(None)
    assert isinstance(d, imaguard.XattrStore)
    assert d.attribute == ("security.ima" if IS_ROOT else "user.ima")
    assert isinstance(default_store(), imaguard.XattrStore)


@pytest.mark.parametrize("name", ["bogus", "", "XATTR", "security.ima"])
def test_store_for_unknown_name(name: str) -> None:
    with pytest.raises(imaguard.UsageError) as exc:
        store_for(name)
    assert "xattr" in str(exc.value)
    assert "sigfile" in str(exc.value)


def test_unknown_store_name_in_calls(target: Path, rsa_key: imaguard.PrivateKey) -> None:
    with pytest.raises(imaguard.UsageError):
        imaguard.sign_file(target, rsa_key, store="bogus")
    with pytest.raises(imaguard.UsageError):
        imaguard.store_digest(target, store="bogus")
    assert os.listxattr(target) == []


@needs_root
def test_default_store_as_root_is_security_ima(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    value = imaguard.sign_file(target, rsa_key)
    assert os.getxattr(target, "security.ima") == value.serialize()
    assert imaguard.appraise(target, rsa_ring).passed


# --- a filesystem without extended attributes -------------------------------------


@pytest.mark.parametrize("attribute", ["security.ima", "user.ima"])
def test_ramfs_sign_raises_store_error(
    ramfs: Path, rsa_key: imaguard.PrivateKey, attribute: str
) -> None:
    p = ramfs / "file"
    p.write_bytes(CONTENT)
    store = imaguard.XattrStore(attribute)
    with pytest.raises(imaguard.StoreError) as exc:
        imaguard.sign_file(p, rsa_key, store=store)
    msg = str(exc.value)
    assert str(p) in msg
    assert "does not support extended attributes" in msg
    with pytest.raises(imaguard.StoreError, match="does not support extended attributes"):
        imaguard.store_digest(p, store=store)
    with pytest.raises(imaguard.StoreError, match="does not support extended attributes"):
        imaguard.signature_info(p, store=store)
    assert p.read_bytes() == CONTENT


@pytest.mark.parametrize("store", ["xattr", "user-xattr"])
def test_ramfs_appraise_is_unknown(ramfs: Path, rsa_ring: imaguard.Keyring, store: str) -> None:
    p = ramfs / "file"
    p.write_bytes(CONTENT)
    v = imaguard.appraise(p, rsa_ring, store=store)
    assert v.status is Status.UNKNOWN
    assert v.cause == "unknown"
    assert "extended attributes" in v.detail
    assert not v.passed


def test_ramfs_sidecar_works(
    ramfs: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    p = ramfs / "file"
    p.write_bytes(CONTENT)
    imaguard.sign_file(p, rsa_key, store="sigfile")
    assert imaguard.appraise(p, rsa_ring, store="sigfile").passed
    assert sorted(x.name for x in ramfs.iterdir()) == ["file", "file.sig"]


def test_sidecar_concurrent_signers_of_one_file(
    target: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    # Threads of one process signing the same file: each write replaces the .sig in one
    # step, so every call succeeds and the survivor verifies. (The temporary file must
    # not be shared between concurrent writers.)
    errors: list[str] = []

    def work() -> None:
        for _ in range(50):
            try:
                imaguard.sign_file(target, rsa_key, store="sigfile")
            except imaguard.Error as e:
                errors.append(str(e))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert imaguard.appraise(target, rsa_ring, store="sigfile").passed
    assert sorted(p.name for p in target.parent.iterdir()) == ["file", "file.sig"]
