"""The direct calls cache nothing unless the caller passes its own VerdictCache."""

from __future__ import annotations

from pathlib import Path

import pytest

import imaguard
from imaguard.appraise import VerdictCache
from imaguard.appraise import _cache as cache_module


@pytest.fixture
def signed_file(tmp_path: Path, rsa_key: imaguard.PrivateKey) -> Path:
    f = tmp_path / "prog"
    f.write_bytes(b"#!/bin/sh\n")
    imaguard.sign_file(f, rsa_key, store="sigfile")
    return f


def test_there_is_no_process_wide_cache() -> None:
    assert not hasattr(cache_module, "DEFAULT_CACHE")
    assert imaguard.VerdictCache is VerdictCache


@pytest.mark.parametrize("bad", [True, False, "yes", {}])
def test_cache_takes_only_a_verdict_cache(
    signed_file: Path, rsa_ring: imaguard.Keyring, bad: object
) -> None:
    with pytest.raises(imaguard.UsageError, match="VerdictCache"):
        imaguard.appraise(signed_file, rsa_ring, store="sigfile", cache=bad)  # type: ignore[arg-type]


def test_a_callers_cache_is_used_and_only_it(signed_file: Path, rsa_ring: imaguard.Keyring) -> None:
    mine, other = VerdictCache(), VerdictCache()
    first = imaguard.appraise(signed_file, rsa_ring, store="sigfile", cache=mine)
    again = imaguard.appraise(signed_file, rsa_ring, store="sigfile", cache=mine)
    assert first.passed
    assert again == first
    assert (mine.misses, mine.hits, len(mine)) == (1, 1, 1)
    # Another cache, and a call with none, share nothing with it.
    imaguard.appraise(signed_file, rsa_ring, store="sigfile", cache=other)
    assert (other.misses, other.hits) == (1, 0)
    imaguard.appraise(signed_file, rsa_ring, store="sigfile")
    assert (mine.misses, mine.hits) == (1, 1)


def test_a_changed_file_misses(signed_file: Path, rsa_ring: imaguard.Keyring) -> None:
    mine = VerdictCache()
    assert imaguard.appraise(signed_file, rsa_ring, store="sigfile", cache=mine).passed
    signed_file.write_bytes(b"#!/bin/sh\nevil\n")
    v = imaguard.appraise(signed_file, rsa_ring, store="sigfile", cache=mine)
    assert not v.passed
    assert mine.hits == 0
