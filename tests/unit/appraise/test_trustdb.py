"""The trust database: lists merged into mapped tables, updated atomically, refused whole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import imaguard
from imaguard.appraise import TrustDB, verify_list
from imaguard.appraise import _trustdb as trustdb
from imaguard.core import Guard, MemoryAudit
from imaguard.errors import FormatError, UsageError, VerificationError
from imaguard.formats import digestlist as dlf
from imaguard.policy import PolicySet, parse_policy


def digest(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


def signed_list(key: imaguard.PrivateKey, tags: list[str], source: str = "test") -> bytes:
    dl = dlf.DigestList.build("sha256", {digest(t): f"/x/{t}" for t in tags}, source=source)
    body = dlf.serialize(dl)
    return dlf.append_signature(body, imaguard.sign_bytes(body, key).serialize())


def test_add_lookup_and_reopen(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    db = TrustDB(tmp_path / "t")
    assert db.lookup(digest("a")) == []
    info = db.add(signed_list(ec_key, ["a", "b"], "deb:x=1"), ec_ring, name="x")
    assert (info.name, info.source, info.count, info.algorithm) == ("x", "deb:x=1", 2, "sha256")
    assert info.key_id == f"{ec_key.key_id:08x}"
    assert [li.name for li in db.lookup(digest("a"))] == ["x"]
    assert db.lookup(digest("c")) == []
    again = TrustDB(tmp_path / "t")  # another reader: maps the same tables
    assert [li.id for li in again.lookup(digest("b"))] == [info.id]
    assert len(again) == 2
    assert (tmp_path / "t" / "lists" / f"{info.id}.list").read_bytes().endswith(dlf.SIGNATURE_MAGIC)


def test_a_digest_in_two_lists_names_both(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    db = TrustDB(tmp_path / "t")
    db.add(signed_list(ec_key, ["shared", "one"]), ec_ring, name="first")
    db.add(signed_list(ec_key, ["shared", "two"]), ec_ring, name="second")
    assert sorted(li.name for li in db.lookup(digest("shared"))) == ["first", "second"]


def test_small_tables_fold_into_the_base_and_every_digest_stays(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    db = TrustDB(tmp_path / "t")
    tags = [[f"l{i}-{j}" for j in range(50)] for i in range(trustdb.MAX_DELTAS + 3)]
    for i, t in enumerate(tags):
        db.add(signed_list(ec_key, t), ec_ring, name=f"l{i}")
        manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
        assert len(manifest["tables"]["sha256"]) <= 1 + trustdb.MAX_DELTAS
    assert len(db) == sum(len(t) for t in tags)
    for i, t in enumerate(tags):
        for tag in t:
            assert [li.name for li in db.lookup(digest(tag))] == [f"l{i}"]
    # the files no manifest refers to are gone
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    on_disk = {p.name for p in (tmp_path / "t").glob("table-*.bin")}
    assert on_disk == set(manifest["tables"]["sha256"])


def test_remove_stops_vouching_at_once_and_rebuilds_later(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    db = TrustDB(tmp_path / "t")
    db.add(signed_list(ec_key, [f"big{i}" for i in range(40)]), ec_ring, name="big")
    db.add(signed_list(ec_key, ["small"]), ec_ring, name="small")
    removed = db.remove("small")
    assert removed.removed
    assert db.lookup(digest("small")) == []
    assert [li.name for li in db.lists()] == ["big"]
    with pytest.raises(UsageError, match="no loaded digest list"):
        db.remove("small")
    db.remove("big")  # now everything is dead: rebuilt without both
    assert db.lists() == []
    assert db.lookup(digest("big1")) == []
    assert list((tmp_path / "t" / "lists").glob("*.list")) == []


def test_refused_whole_and_the_database_unchanged(
    tmp_path: Path,
    ec_key: imaguard.PrivateKey,
    ec_ring: imaguard.Keyring,
    rsa_key: imaguard.PrivateKey,
) -> None:
    db = TrustDB(tmp_path / "t")
    db.add(signed_list(ec_key, ["kept"]), ec_ring, name="kept")
    before = (tmp_path / "t" / "manifest.json").read_bytes()
    good = signed_list(ec_key, ["new"])
    body, _ = dlf.split_signature(good)
    cases: list[tuple[bytes, type[Exception], str]] = [
        (body, VerificationError, "not signed"),
        (signed_list(rsa_key, ["new"]), VerificationError, "does not verify"),
        (body[:-5] + good[len(body) :], FormatError, "holds|path|ends"),  # cut short
        (good[:10] + b"\x00\x63" + good[12:], FormatError, "algorithm id 99"),
    ]
    for data, kind, text in cases:
        with pytest.raises(kind, match=text):
            db.add(data, ec_ring)
        assert (tmp_path / "t" / "manifest.json").read_bytes() == before
    with pytest.raises(UsageError, match="already loaded"):
        db.add(signed_list(ec_key, ["kept"]), ec_ring)
    assert db.lookup(digest("new")) == []
    assert [li.name for li in db.lookup(digest("kept"))] == ["kept"]


def test_a_detached_signature(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    data = signed_list(ec_key, ["d"])
    body, value = dlf.split_signature(data)
    assert value is not None
    dl, verdict = verify_list(body, ec_ring, signature=value)
    assert verdict.passed
    assert len(dl) == 1
    info = TrustDB(tmp_path / "t").add(body, ec_ring, signature=value, name="detached")
    assert info.count == 1


def test_a_reader_keeps_its_tables_until_it_refreshes(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    writer = TrustDB(tmp_path / "t")
    writer.add(signed_list(ec_key, ["one"]), ec_ring, name="one")
    reader = TrustDB(tmp_path / "t")
    writer.add(signed_list(ec_key, ["two"]), ec_ring, name="two")
    assert reader.lookup(digest("two")) == []  # its view: the generation it opened
    assert reader.lookup(digest("one")) != []
    assert reader.refresh()
    assert [li.name for li in reader.lookup(digest("two"))] == ["two"]
    assert not reader.refresh()


def test_a_corrupt_table_is_refused(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    TrustDB(tmp_path / "t").add(signed_list(ec_key, ["x"]), ec_ring, name="x")
    table = next((tmp_path / "t").glob("table-*.bin"))
    table.write_bytes(table.read_bytes()[:-3])
    with pytest.raises(FormatError, match="size does not match"):
        TrustDB(tmp_path / "t")


def test_the_guard_accepts_a_listed_digest_only_under_digestlist(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    listed = tmp_path / "listed"
    listed.write_bytes(b"listed content")
    other = tmp_path / "other"
    other.write_bytes(b"other content")
    dl = dlf.DigestList.build("sha256", {hashlib.sha256(b"listed content").digest(): None})
    body = dlf.serialize(dl)
    db = TrustDB(tmp_path / "t")
    db.add(dlf.append_signature(body, imaguard.sign_bytes(body, ec_key).serialize()), ec_ring)

    def decide(rules: str, path: Path) -> imaguard.Decision:
        ps = PolicySet()
        ps.add("p", parse_policy(rules, mode="imaguard"))
        guard = Guard(ps, ec_ring, audit=MemoryAudit(), trust=db, store=imaguard.MemoryStore())
        return guard.process(path, "FILE_CHECK")

    d = decide("appraise func=FILE_CHECK appraise_type=digestlist\n", listed)
    assert d.allowed
    assert d.verdict is not None
    assert d.verdict.detail.startswith("vouched for by digest list ")
    assert d.verdict.digest == hashlib.sha256(b"listed content").digest()
    assert not decide("appraise func=FILE_CHECK appraise_type=digestlist\n", other).allowed
    # a plain signature rule does not take a list's word for it
    assert not decide("appraise func=FILE_CHECK appraise_type=imasig\n", listed).allowed
    # appraise_algos that exclude the list's algorithm: the list does not count
    rules = "appraise func=FILE_CHECK appraise_type=digestlist appraise_algos=sha512\n"
    assert not decide(rules, listed).allowed
