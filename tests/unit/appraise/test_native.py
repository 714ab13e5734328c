"""The C quick path (imaguard._native) against the Python one and against appraise().

It must answer "passes" exactly where the pure-Python predicate does (and so only where
:func:`imaguard.appraise` passes), for any stored value and content; stay right with many
threads and keys at once; and refuse bad arguments with a clear error.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imaguard
from helpers import oracle_missing
from imaguard.appraise._quick import QuickPass, native_enabled, quick_pass

STORE = imaguard.XattrStore("user.ima")


@pytest.fixture(autouse=True)
def _built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGUARD_NATIVE", raising=False)
    if not native_enabled():
        oracle_missing("imaguard._native is not built (needs gcc and libssl-dev: make deps)")


def _native() -> Any:
    from imaguard import _native

    return _native


def _quick(ring: imaguard.Keyring, native: bool, **kw: object) -> QuickPass:
    q = quick_pass(ring, require="signature", store=STORE, native=native, **kw)  # type: ignore[arg-type]
    assert q is not None
    assert q.native == native
    return q


def _signed(path: Path, key: imaguard.PrivateKey, data: bytes, algo: str = "sha256") -> Path:
    path.write_bytes(data)
    imaguard.sign_file(path, key, algo, STORE)
    return path


@pytest.fixture(scope="module")
def keys(keys_dir: dict[str, Path]) -> dict[str, imaguard.PrivateKey]:
    return {name: imaguard.load_private_key(d / "private.pem") for name, d in keys_dir.items()}


@pytest.fixture(scope="module")
def ring(keys_dir: dict[str, Path]) -> imaguard.Keyring:
    """Every key type trusted at once."""
    return imaguard.Keyring.load(*(d / "cert.der" for d in keys_dir.values()))


def test_every_key_type_and_algorithm_passes_in_one_call(
    tmp_path: Path, keys: dict[str, imaguard.PrivateKey], ring: imaguard.Keyring
) -> None:
    files: list[str] = []
    expect: list[bool] = []
    rng = random.Random(7)
    for name, key in sorted(keys.items()):
        for algo in ("sha1", "sha256", "sha384", "sha512"):
            for size in (0, 1, 4096, (1 << 16) + 1, (1 << 20) * 2 + 3):
                p = _signed(tmp_path / f"{name}-{algo}-{size}", key, rng.randbytes(size), algo)
                files.append(str(p))
                expect.append(True)
                if size and rng.random() < 0.5:  # a tampered copy, next to the good one
                    bad = tmp_path / f"{name}-{algo}-{size}-bad"
                    data = bytearray(p.read_bytes())
                    data[rng.randrange(size)] ^= 0x01
                    bad.write_bytes(bytes(data))
                    os.setxattr(bad, "user.ima", os.getxattr(p, "user.ima"))
                    files.append(str(bad))
                    expect.append(False)
    q = _quick(ring, native=True)
    ok, rest = q.many(files)  # the pairs are registered on the way (answer 2, then Python)
    assert ok == sum(expect)
    assert rest == [f for f, e in zip(files, expect, strict=True) if not e]
    # A second call finds every pair registered and answers wholly in C, the same.
    assert set(_native_flags(q, files)) <= {0, 1}
    assert q.many(files) == (ok, rest)
    for f in rest:
        assert not imaguard.appraise(f, ring, store=STORE).passed


def _native_flags(q: QuickPass, files: list[str]) -> bytes:
    flags: bytes = q._native.run(files)
    return flags


def test_files_that_are_not_plain_regular_files(tmp_path: Path, ring: imaguard.Keyring) -> None:
    q = _quick(ring, native=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    weird = [str(fifo), str(tmp_path), "/proc/self/status", str(tmp_path / "missing"), ""]
    assert list(_native_flags(q, weird)) == [0] * len(weird)


def test_no_stored_value_and_values_too_large(
    tmp_path: Path, keys: dict[str, imaguard.PrivateKey], ring: imaguard.Keyring
) -> None:
    q = _quick(ring, native=True)
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    good = _signed(tmp_path / "good", keys["rsa2048"], b"x")
    big = tmp_path / "big"
    big.write_bytes(b"x")
    raw = os.getxattr(good, "user.ima")
    try:
        os.setxattr(big, "user.ima", raw + b"\0" * 5000)
    except OSError:
        big.unlink()  # this file system keeps no value that large: nothing to check
    paths = [str(p) for p in (plain, good, big) if p.exists()]
    assert q.many(paths) == (1, [p for p in paths if p != str(good)])


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cut=st.integers(min_value=0, max_value=600),
    flips=st.lists(st.tuples(st.integers(0, 599), st.integers(1, 255)), max_size=3),
    extra=st.binary(max_size=4),
    content_flip=st.booleans(),
    header=st.sampled_from(
        [None, b"\x03\x02", b"\x03\x03", b"\x04\x02", b"\x02\x01", b"\x03\x02\x11"]
    ),
)
def test_any_value_and_content_the_same_answer_as_python(
    tmp_path: Path,
    keys: dict[str, imaguard.PrivateKey],
    ring: imaguard.Keyring,
    cut: int,
    flips: list[tuple[int, int]],
    extra: bytes,
    content_flip: bool,
    header: bytes | None,
) -> None:
    key = keys["rsa2048"] if cut % 2 else keys["ecdsa-p256"]
    p = _signed(tmp_path / "f", key, b"content of the file " * (cut % 7))
    value = bytearray(os.getxattr(p, "user.ima"))
    if header is not None:
        value[: len(header)] = header
    for at, x in flips:
        if at < len(value):
            value[at] ^= x
    if cut < len(value):
        del value[cut:]
    value += extra
    if value:
        os.setxattr(p, "user.ima", bytes(value))
    else:
        os.removexattr(p, "user.ima")
    if content_flip:
        with p.open("ab") as f:
            f.write(b"!")
    slow = _quick(ring, native=False)(str(p))
    fast_q = _quick(ring, native=True)
    assert fast_q.many([str(p)]) == ((1, []) if slow else (0, [str(p)]))
    assert _native_flags(fast_q, [str(p)]) in (b"\x00", b"\x01")  # the pair is known now
    if slow:
        assert imaguard.appraise(p, ring, store=STORE).passed


def test_many_threads_many_keys(
    tmp_path: Path, keys: dict[str, imaguard.PrivateKey], ring: imaguard.Keyring
) -> None:
    """Threads race to register the same pairs and verify with every key at once."""
    rng = random.Random(11)
    files: list[str] = []
    bad: set[str] = set()
    for i in range(400):
        name = sorted(keys)[i % len(keys)]
        p = _signed(tmp_path / f"f{i}", keys[name], rng.randbytes(rng.randrange(1, 3000)))
        if i % 13 == 0:
            with p.open("ab") as f:
                f.write(b"tampered")
            bad.add(str(p))
        files.append(str(p))
    q = _quick(ring, native=True)
    results: list[tuple[int, list[str]]] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def work(seed: int) -> None:
        mine = list(files)
        random.Random(seed).shuffle(mine)
        start.wait()
        for i in range(0, len(mine), 37):
            r = q.many(mine[i : i + 37])
            with lock:
                results.append(r)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(ok for ok, _ in results) == 6 * (len(files) - len(bad))
    assert sorted(f for _, rest in results for f in rest) == sorted(list(bad) * 6)


def test_keyring_rules_decided_in_python_hold_in_c(
    tmp_path: Path, keys: dict[str, imaguard.PrivateKey], ring: imaguard.Keyring
) -> None:
    good = _signed(tmp_path / "good", keys["rsa2048"], b"content")
    other = _signed(tmp_path / "other", keys["ecdsa-p384"], b"other content")
    paths = [str(good), str(other)]
    revoked = ring.revoke(keys["rsa2048"].key_id)
    assert _quick(revoked, native=True).many(paths) == (1, [str(good)])
    only512 = _quick(ring, native=True, algorithms=frozenset({"sha512"}))
    assert only512.many(paths) == (0, paths)
    assert only512.many(paths) == (0, paths)  # registered as "no quick path", still no
    # A blacklist is looked up in Python: then there is no C path at all.
    listed = ring.blacklist(imaguard.hash_file(good, "sha256").value)
    q = quick_pass(listed, require="signature", store=STORE, native=True)
    assert q is not None
    assert not q.native
    assert q.many(paths) == (1, [str(good)])


def test_the_environment_turns_it_off(
    monkeypatch: pytest.MonkeyPatch, ring: imaguard.Keyring
) -> None:
    monkeypatch.setenv("IMAGUARD_NATIVE", "0")
    assert not native_enabled()
    q = quick_pass(ring, require="signature", store=STORE)
    assert q is not None
    assert not q.native
    monkeypatch.setenv("IMAGUARD_NATIVE", "1")
    q = quick_pass(ring, require="signature", store=STORE)
    assert q is not None
    assert q.native


def test_bad_arguments_are_refused_clearly(tmp_path: Path) -> None:
    native = _native()
    qv = native.QuickVerifier("user.ima")
    with pytest.raises(TypeError, match="list of paths"):
        qv.run(42)
    with pytest.raises(ValueError, match=r"null|NUL"):
        qv.run(["a\0b"])
    with pytest.raises(TypeError):
        qv.run([42])
    assert qv.run([]) == b""
    assert qv.run([os.fsencode(tmp_path)]) == b"\x00"  # bytes paths are accepted
    with pytest.raises(ValueError, match="out of range"):
        qv.add(256, 1, None)
    with pytest.raises((ValueError, OverflowError)):
        qv.add(4, 1 << 40, None)
    with pytest.raises(ValueError, match="bad attribute"):
        native.QuickVerifier("")
    with pytest.raises(TypeError, match="already"):
        qv.__init__("user.other")
    # A key OpenSSL cannot read, a digest it does not know or of the wrong size: no quick path.
    assert not qv.add(4, 1, "sha256", b"not a key", 32)
    assert qv.add(4, 1, "sha256", b"x", 32) is False  # the first registration stands


def test_a_key_is_registered_once_and_checked(keys: dict[str, imaguard.PrivateKey]) -> None:
    from cryptography.hazmat.primitives import serialization

    native = _native()
    der = keys["rsa2048"].public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    qv = native.QuickVerifier("user.ima")
    assert qv.add(4, 7, "sha256", der, 32)
    assert not qv.add(4, 8, "sha256", der, 48)  # the digest size must agree
    assert not qv.add(4, 9, "no-such-digest", der, 32)
    assert not qv.add(4, 10, "sha256", der + b"\0", 32)  # trailing bytes after the key
    assert qv.add(4, 7, None)  # already registered with a key: that stands
