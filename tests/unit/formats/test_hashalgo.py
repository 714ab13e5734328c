"""The kernel's hash-algorithm table (spec kernel-ima.md §3.3) and its lookups."""

from __future__ import annotations

import hashlib

import pytest

import imaguard
from imaguard.formats import hashalgo
from imaguard.formats.hashalgo import ALGORITHMS, HashAlgo, by_id, by_name, computable_names

# Spec kernel-ima.md §3.3, copied by hand: id -> (kernel name, digest size).
SPEC_TABLE: dict[int, tuple[str, int]] = {
    0: ("md4", 16),
    1: ("md5", 16),
    2: ("sha1", 20),
    3: ("rmd160", 20),
    4: ("sha256", 32),
    5: ("sha384", 48),
    6: ("sha512", 64),
    7: ("sha224", 28),
    8: ("rmd128", 16),
    9: ("rmd256", 32),
    10: ("rmd320", 40),
    11: ("wp256", 32),
    12: ("wp384", 48),
    13: ("wp512", 64),
    14: ("tgr128", 16),
    15: ("tgr160", 20),
    16: ("tgr192", 24),
    17: ("sm3", 32),
    18: ("streebog256", 32),
    19: ("streebog512", 64),
    20: ("sha3-256", 32),
    21: ("sha3-384", 48),
    22: ("sha3-512", 64),
}


def _hashlib_can(name: str | None) -> bool:
    if name is None:
        return False
    try:
        hashlib.new(name)
    except ValueError:
        return False
    return True


def test_table_has_exactly_ids_0_to_22_in_order() -> None:
    assert [a.id for a in ALGORITHMS] == list(range(23))
    assert len(ALGORITHMS) == len(SPEC_TABLE) == 23


@pytest.mark.parametrize(
    ("algo_id", "name", "size"), [(i, n, s) for i, (n, s) in SPEC_TABLE.items()]
)
def test_table_row_matches_spec(algo_id: int, name: str, size: int) -> None:
    algo = ALGORITHMS[algo_id]
    assert algo.id == algo_id
    assert algo.name == name
    assert algo.digest_size == size
    assert str(algo) == name


@pytest.mark.parametrize(
    ("algo_id", "name", "size"), [(i, n, s) for i, (n, s) in SPEC_TABLE.items()]
)
def test_by_id_and_by_name_agree(algo_id: int, name: str, size: int) -> None:
    assert by_id(algo_id) is by_name(name)
    assert by_id(algo_id).digest_size == size


def test_constants_match_spec() -> None:
    assert hashalgo.HASH_ALGO_LAST == 23
    assert hashalgo.HASH_MAX_DIGESTSIZE == 64
    assert max(a.digest_size for a in ALGORITHMS) == hashalgo.HASH_MAX_DIGESTSIZE


def test_names_are_unique() -> None:
    names = [a.name for a in ALGORITHMS]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("bad_id", [23, -1, 255, 24, 1000])
def test_by_id_unknown_raises_format_error(bad_id: int) -> None:
    with pytest.raises(imaguard.FormatError) as exc:
        by_id(bad_id)
    msg = str(exc.value)
    assert str(bad_id) in msg
    assert "0-22" in msg


def test_format_error_is_an_imaguard_error() -> None:
    with pytest.raises(imaguard.Error):
        by_id(23)


@pytest.mark.parametrize("bad_name", ["sha257", "", "sha-256", "md6", "blake2b", "sha3_256"])
def test_by_name_unknown_raises_format_error(bad_name: str) -> None:
    with pytest.raises(imaguard.FormatError) as exc:
        by_name(bad_name)
    msg = str(exc.value)
    assert repr(bad_name) in msg
    assert "unknown hash algorithm" in msg
    # The message lists the names that would have worked.
    assert "sha256" in msg
    assert "sha3-512" in msg


@pytest.mark.parametrize("spelling", ["SHA256", "Sha256", " sha256 ", "sha256\n"])
def test_by_name_is_case_insensitive_and_strips(spelling: str) -> None:
    assert by_name(spelling) is ALGORITHMS[4]


@pytest.mark.parametrize("algo", ALGORITHMS, ids=lambda a: a.name)
def test_computable_matches_hashlib(algo: HashAlgo) -> None:
    assert algo.computable == _hashlib_can(algo.hashlib_name)


@pytest.mark.parametrize("algo", ALGORITHMS, ids=lambda a: a.name)
def test_new_matches_hashlib_or_raises(algo: HashAlgo) -> None:
    if algo.computable:
        assert algo.hashlib_name is not None
        h = algo.new()
        assert h.digest_size == algo.digest_size
        h.update(b"imaguard")
        assert h.digest() == hashlib.new(algo.hashlib_name, b"imaguard").digest()
    else:
        with pytest.raises(imaguard.FormatError, match=algo.name):
            algo.new()


@pytest.mark.parametrize("name", ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"])
def test_guaranteed_algorithms_are_computable(name: str) -> None:
    # hashlib guarantees these on every build; the table must mark them computable.
    assert by_name(name).computable
    assert name in computable_names()


@pytest.mark.parametrize(
    "name",
    ["rmd128", "rmd256", "rmd320", "wp256", "wp384", "tgr128", "tgr160", "tgr192", "streebog256"],
)
def test_algorithms_without_hashlib_name_are_not_computable(name: str) -> None:
    algo = by_name(name)
    assert algo.hashlib_name is None
    assert not algo.computable
    assert name not in computable_names()


def test_computable_names_in_table_order() -> None:
    expected = [a.name for a in ALGORITHMS if _hashlib_can(a.hashlib_name)]
    assert computable_names() == expected


def test_hash_algo_is_frozen() -> None:
    algo = by_name("sha256")
    with pytest.raises(AttributeError):
        algo.id = 5  # type: ignore[misc]
