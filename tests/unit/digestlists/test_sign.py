"""sign_list (appended and detached), verify_list, read_list, list_name, and a made list
through the trust database."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import imaguard
from imaguard import digestlists
from imaguard.digestlists import DigestList, TrustDB, list_name, read_list, sign_list, verify_list
from imaguard.errors import FormatError, VerificationError
from imaguard.formats import digestlist as dlf
from imaguard.formats import parse as parse_value
from imaguard.formats.xattr import SignatureValue


def sample(source: str = "deb:hello=2.10-3") -> DigestList:
    return DigestList.build(
        "sha256",
        [(hashlib.sha256(x).digest(), f"/usr/bin/{x.decode()}") for x in (b"a", b"b", b"c")],
        created=1,
        source=source,
    )


def test_appended_signature_verifies(
    rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    signed = sign_list(sample(), rsa_key)
    body, value = dlf.split_signature(signed)
    assert body == dlf.serialize(sample())
    assert value is not None
    parsed = parse_value(value)
    assert isinstance(parsed, SignatureValue)
    assert parsed.key_id == rsa_key.key_id
    dl, verdict = verify_list(signed, rsa_ring)
    assert dl == sample()
    assert verdict.passed
    assert verdict.key_id == rsa_key.key_id


def test_detached_signature_verifies(
    ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    body = dlf.serialize(sample())
    value = sign_list(sample(), ec_key, detached=True)
    assert not value.endswith(dlf.SIGNATURE_MAGIC)
    dl, verdict = verify_list(body, ec_ring, signature=value)
    assert verdict.passed
    assert dl == sample()
    with pytest.raises(VerificationError, match="not signed"):
        verify_list(body, ec_ring)


def test_signing_again_replaces_the_signature(
    rsa_key: imaguard.PrivateKey, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    once = sign_list(sample(), rsa_key)
    twice = sign_list(once, ec_key, algorithm="sha512")
    assert twice.count(dlf.SIGNATURE_MAGIC) == 1
    _, verdict = verify_list(twice, ec_ring)
    assert verdict.passed
    assert verdict.algorithm == "sha512"


def test_wrong_key_and_tampering(
    rsa_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring, rsa_ring: imaguard.Keyring
) -> None:
    signed = sign_list(sample(), rsa_key)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_list(signed, ec_ring, name="L")
    tampered = bytearray(signed)
    tampered[24] ^= 1  # the created field
    with pytest.raises(VerificationError, match="L: the digest list's signature does not verify"):
        verify_list(bytes(tampered), rsa_ring, name="L")


def test_malformed_bytes_are_not_signed(rsa_key: imaguard.PrivateKey) -> None:
    with pytest.raises(FormatError):
        sign_list(b"IGDLIST\0 but nothing else", rsa_key)
    with pytest.raises(TypeError, match="PrivateKey or a path"):
        sign_list(sample(), 42)


def test_key_given_as_a_path(keys_dir: dict[str, Path], rsa_ring: imaguard.Keyring) -> None:
    signed = sign_list(dlf.serialize(sample()), keys_dir["rsa2048"] / "private.pem")
    assert verify_list(signed, rsa_ring)[1].passed


def test_read_list(tmp_path: Path, rsa_key: imaguard.PrivateKey) -> None:
    plain = tmp_path / "plain.list"
    plain.write_bytes(dlf.serialize(sample()))
    assert read_list(plain) == (plain.read_bytes(), None)
    value = sign_list(sample(), rsa_key, detached=True)
    (tmp_path / "plain.list.sig").write_bytes(value)
    assert read_list(plain) == (plain.read_bytes(), value)
    appended = tmp_path / "appended.list"
    appended.write_bytes(sign_list(sample(), rsa_key))
    (tmp_path / "appended.list.sig").write_bytes(b"ignored: the appended one wins")
    assert read_list(appended) == (appended.read_bytes(), None)
    with pytest.raises(imaguard.FileError, match=r"absent\.list: cannot read the digest list"):
        read_list(tmp_path / "absent.list")


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("deb:hello=2.10-3", "deb:hello"),
        ("dpkg:coreutils=9.1-1", "dpkg:coreutils"),
        ("deb:libc6=2:2.36", "deb:libc6"),
        ("dpkg:a=1,b=2", "dpkg:a=1,b=2"),
        ("tree:/srv/app", "tree:/srv/app"),
        ("", "fallback"),
    ],
)
def test_list_name(source: str, name: str) -> None:
    assert list_name(sample(source), "fallback") == name


def test_a_made_list_vouches_through_the_trust_database(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / "run").write_bytes(b"#!/bin/sh\necho run\n")
    signed = sign_list(digestlists.make_from_tree(root, source="tree:app"), rsa_key)
    db = TrustDB(tmp_path / "trust")
    try:
        info = db.add(signed, rsa_ring, name="app")
        assert (info.name, info.count, info.source) == ("app", 1, "tree:app")
        digest = imaguard.hash_file(root / "run").value
        assert [li.id for li in db.lookup(digest)] == [info.id]
        assert db.lookup(hashlib.sha256(b"other").digest()) == []
    finally:
        db.close()


def test_public_names() -> None:
    assert set(digestlists.__all__) == {
        "DigestList",
        "ListInfo",
        "MakeReport",
        "TrustDB",
        "list_name",
        "make_from_deb",
        "make_from_dpkg",
        "make_from_runtime_policy",
        "make_from_tree",
        "read_list",
        "sign_list",
        "verify_list",
    }
    for name in digestlists.__all__:
        assert getattr(digestlists, name) is not None
