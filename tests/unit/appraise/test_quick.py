"""The quick path of a tree verify: True only where appraise() passes; the counted runner.

Each test runs twice: on the pure-Python predicate and on the C one (imaguard._native),
through :meth:`QuickPass.many` as the tree verbs call it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import imaguard
from helpers import oracle_missing
from imaguard.appraise import _batch as batch
from imaguard.appraise._quick import SMALL, QuickPass, native_enabled, quick_pass
from imaguard.formats import hashalgo
from imaguard.formats.xattr import digest_value

STORE = imaguard.XattrStore("user.ima")

_NATIVE = False  # which predicate _passes builds: set by the autouse fixture below


@pytest.fixture(autouse=True, params=["python", "c"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    global _NATIVE
    _NATIVE = bool(request.param == "c")
    monkeypatch.delenv("IMAGUARD_NATIVE", raising=False)
    if _NATIVE and not native_enabled():
        oracle_missing("imaguard._native is not built (needs gcc and libssl-dev: make deps)")
    return bool(_NATIVE)


def _passes(ring: imaguard.Keyring, **kw: object) -> Callable[[str], bool]:
    q = quick_pass(ring, require="signature", store=STORE, native=_NATIVE, **kw)  # type: ignore[arg-type]
    assert q is not None
    assert q.native == (_NATIVE and not ring.blacklisted_digests)
    return _one_by_one(q)


def _one_by_one(q: QuickPass) -> Callable[[str], bool]:
    """The predicate, asked through many() as the batch runner asks it."""

    def passes(path: str) -> bool:
        ok, rest = q.many([path])
        assert (ok, rest) in ((1, []), (0, [path]))
        if q.native:  # a second ask, with the pair now registered in C, answers the same
            assert q.many([path]) == (ok, rest)
        return ok == 1

    return passes


def _signed(path: Path, key: imaguard.PrivateKey, data: bytes, algo: str = "sha256") -> Path:
    path.write_bytes(data)
    imaguard.sign_file(path, key, algo, STORE)
    return path


def _agrees(q: Callable[[str], bool], path: Path, ring: imaguard.Keyring) -> bool:
    """quick's answer, after checking it never says pass where appraise() does not."""
    answer = q(str(path))
    if answer:
        assert imaguard.appraise(path, ring, store=STORE).passed, path
    return answer


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_valid_signatures_pass_small_and_large(
    tmp_path: Path,
    kind: str,
    rsa_key: imaguard.PrivateKey,
    ec_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
    ec_ring: imaguard.Keyring,
) -> None:
    key, ring = (rsa_key, rsa_ring) if kind == "rsa" else (ec_key, ec_ring)
    q = _passes(ring)
    for name, size in (("empty", 0), ("small", 100), ("edge", SMALL), ("large", SMALL * 3 + 7)):
        p = _signed(tmp_path / name, key, os.urandom(size))
        assert _agrees(q, p, ring), name
    p = _signed(tmp_path / "sha512", key, b"x" * 300, "sha512")
    assert _agrees(q, p, ring)


def test_everything_unusual_goes_to_the_full_path(
    tmp_path: Path,
    rsa_key: imaguard.PrivateKey,
    ec_key: imaguard.PrivateKey,
    rsa_ring: imaguard.Keyring,
) -> None:
    q = _passes(rsa_ring)
    cases: dict[str, Path] = {}
    cases["unsigned"] = tmp_path / "unsigned"
    cases["unsigned"].write_bytes(b"nothing stored")
    cases["digest"] = tmp_path / "digest"
    cases["digest"].write_bytes(b"a digest value")
    algo = hashalgo.by_name("sha256")
    value = digest_value(algo, imaguard.hash_file(cases["digest"], algo).value)
    os.setxattr(cases["digest"], "user.ima", value.serialize())
    cases["other key"] = _signed(tmp_path / "other", ec_key, b"signed by a key not trusted")
    cases["tampered"] = _signed(tmp_path / "tampered", rsa_key, b"original")
    with cases["tampered"].open("ab") as f:
        f.write(b"!")
    cases["large tampered"] = _signed(tmp_path / "large", rsa_key, b"L" * (SMALL + 10))
    with cases["large tampered"].open("r+b") as f:
        f.write(b"M")
    good = _signed(tmp_path / "good", rsa_key, b"fine")
    raw = os.getxattr(good, "user.ima")
    cases["trailing byte"] = tmp_path / "trailing"
    cases["trailing byte"].write_bytes(b"fine")
    os.setxattr(cases["trailing byte"], "user.ima", raw + b"\0")
    cases["version 3"] = tmp_path / "v3"
    cases["version 3"].write_bytes(b"fine")
    os.setxattr(cases["version 3"], "user.ima", raw[:1] + b"\x03" + raw[2:])
    cases["unknown algorithm"] = tmp_path / "algo"
    cases["unknown algorithm"].write_bytes(b"fine")
    os.setxattr(cases["unknown algorithm"], "user.ima", raw[:2] + b"\xee" + raw[3:])
    cases["header only"] = tmp_path / "header"
    cases["header only"].write_bytes(b"fine")
    os.setxattr(cases["header only"], "user.ima", raw[:9])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases["fifo"] = fifo
    cases["missing"] = tmp_path / "does-not-exist"
    for name, path in cases.items():
        assert not _agrees(q, path, rsa_ring), name
    assert _agrees(q, good, rsa_ring)


def test_keyring_rules_are_kept(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    good = _signed(tmp_path / "good", rsa_key, b"content")
    digest = imaguard.hash_file(good, "sha256").value
    assert _agrees(_passes(rsa_ring), good, rsa_ring)
    assert not _passes(rsa_ring.revoke(rsa_key.key_id))(str(good))
    assert not _passes(rsa_ring.blacklist(digest))(str(good))
    assert _passes(rsa_ring.blacklist(b"\0" * 32))(str(good))
    assert not _passes(rsa_ring, algorithms=frozenset({"sha512"}))(str(good))
    assert _passes(rsa_ring, algorithms=frozenset({"sha256"}))(str(good))
    # Two certificates answering to one key id: the full path tries each; quick does not.
    (cert,) = rsa_ring.certificates
    twice = imaguard.Keyring(certificates=(cert, imaguard.Certificate(cert.x509, "copy")))
    assert len(twice.lookup(rsa_key.key_id)) == 2
    assert not _passes(twice)(str(good))
    assert imaguard.appraise(good, twice, store=STORE).passed


def test_no_quick_path_for_other_stores_and_requirements(rsa_ring: imaguard.Keyring) -> None:
    assert quick_pass(rsa_ring, require="signature", store=imaguard.SidecarStore()) is None
    assert quick_pass(rsa_ring, require="digest", store=STORE) is None
    assert quick_pass(rsa_ring, require="verity", store=STORE) is None
    assert quick_pass(rsa_ring, require="any", store=STORE) is not None


# -- the counted runner ------------------------------------------------------------------


def _tree(root: Path, key: imaguard.PrivateKey, count: int, bad: set[int]) -> list[Path]:
    files = []
    for i in range(count):
        d = root / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        p = _signed(d / f"f{i:04d}", key, f"file {i}\n".encode() * (i % 9 + 1))
        if i in bad:
            with p.open("ab") as f:
                f.write(b"tampered")
        files.append(p)
    return files


def _op(ring: imaguard.Keyring) -> batch.Operation:
    def op(path: str) -> batch.Result:
        v = imaguard.appraise(path, ring, store=STORE)
        if v.passed:
            return batch.Result(path, batch.BatchOutcome.OK)
        return batch.Result(path, batch.BatchOutcome.FAILED, f"{path}: {v.describe()}")

    return op


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_counted_run_matches_the_plain_run(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring, jobs: int
) -> None:
    count = batch.INLINE_LIMIT * 2 + 31
    bad = {3, count // 2, count - 1}
    _tree(tmp_path, rsa_key, count, bad)
    (tmp_path / "link").symlink_to(tmp_path / "d0" / "f0000")
    entries = list(batch.walk([str(tmp_path)], recursive=True))
    plain = batch.run(_op(rsa_ring), entries, jobs=1)
    reported: list[batch.Result] = []
    passes: list[int] = []
    quick = quick_pass(rsa_ring, require="signature", store=STORE, native=_NATIVE)
    counted = batch.run_counted(
        _op(rsa_ring),
        iter(entries),  # a walk still going on, as the command line hands it over
        quick=quick,
        jobs=jobs,
        on_result=reported.append,
        on_passes=passes.append,
    )
    expect = [r for r in plain if r.outcome is not batch.BatchOutcome.OK]
    walked = list(expect)
    if _NATIVE:  # results come in walk order (the forked run reports skips first)
        order = {e.path: i for i, e in enumerate(entries)}
        walked.sort(key=lambda r: order[r.path])
    assert counted.results == walked == reported
    assert [r.outcome for r in expect].count(batch.BatchOutcome.FAILED) == len(bad)
    assert counted.counts[batch.BatchOutcome.OK] == sum(passes) == count - len(bad)
    assert counted.counts[batch.BatchOutcome.SKIPPED] == 1
    # Without a quick path the operation decides every file, with the same outcome.
    slow = batch.run_counted(_op(rsa_ring), entries, jobs=jobs)
    assert slow.results == expect
    assert slow.counts == counted.counts


@pytest.mark.parametrize("native", ["python"], indirect=True)  # forked workers: no C path
def test_a_worker_that_dies_loses_nothing(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    count = batch.INLINE_LIMIT * 3
    files = _tree(tmp_path, rsa_key, count, {7})
    parent = os.getpid()
    victim = str(files[count // 2])
    quick = quick_pass(rsa_ring, require="signature", store=STORE, native=False)
    assert quick is not None

    def dying(path: str) -> bool:
        if path == victim and os.getpid() != parent:
            os._exit(3)  # a worker killed in the middle of a chunk
        return quick(path)

    entries = list(batch.walk([str(tmp_path)], recursive=True))
    counted = batch.run_counted(_op(rsa_ring), entries, quick=dying, jobs=2)
    assert counted.counts[batch.BatchOutcome.OK] == count - 1
    assert [r.path for r in counted.results] == [str(files[7])]
