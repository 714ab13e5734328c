"""make_from_runtime_policy: the digests of one algorithm a Keylime runtime policy lists."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from imaguard.digestlists import MakeReport, make_from_runtime_policy
from imaguard.errors import FileError, FormatError

A256 = hashlib.sha256(b"a").hexdigest()
B256 = hashlib.sha256(b"b").hexdigest()
A1 = hashlib.sha1(b"a").hexdigest()  # noqa: S324 - a digest Keylime policies hold
A512 = hashlib.sha512(b"a").hexdigest()


def policy(digests: dict[str, list[str]], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "meta": {"version": 1, "generator": 0},
        "release": 0,
        "digests": digests,
        "excludes": [],
        "keyrings": {".ima": [A256]},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {"dm_table_load": [B256]},
        "verification-keys": "",
    }
    doc.update(extra)
    return doc


def write(tmp_path: Path, doc: dict[str, Any], name: str = "policy.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_sha256_digests_with_their_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        policy(
            {"/usr/bin/a": [A256, A1], "/usr/bin/b": [B256], "/usr/bin/a-copy": [A256]},
            excludes=["/tmp/.*"],
            release=3,
        ),
    )
    report = MakeReport()
    dl = make_from_runtime_policy(path, report=report)
    assert dl.algorithm.name == "sha256"
    assert set(dl.digests) == {bytes.fromhex(A256), bytes.fromhex(B256)}
    assert dl.paths is not None
    by_digest = dict(zip(dl.digests, dl.paths, strict=True))
    assert by_digest[bytes.fromhex(A256)] == "/usr/bin/a"  # the first path in sorted order
    assert by_digest[bytes.fromhex(B256)] == "/usr/bin/b"
    assert report.hashed == 3
    assert report.skipped == [("/usr/bin/a", "a 160-bit digest")]
    assert dl.source == "keylime:policy.json release 3"
    # keyrings and ima-buf describe no file content: not carried over
    assert len(dl) == 2


def test_other_algorithms(tmp_path: Path) -> None:
    path = write(tmp_path, policy({"/a": [A256, A1, A512]}))
    assert make_from_runtime_policy(path, algorithm="sha1").digests == (bytes.fromhex(A1),)
    assert make_from_runtime_policy(path, algorithm="sha512").digests == (bytes.fromhex(A512),)
    assert make_from_runtime_policy(path, with_paths=False).paths is None


def test_no_digest_of_the_algorithm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, policy({"/a": [A1]}))
    with caplog.at_level(logging.WARNING, logger="imaguard"):
        dl = make_from_runtime_policy(path)
    assert len(dl) == 0
    assert "no sha256 digest in the policy" in caplog.text


def test_bad_policies_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FormatError, match=f"{bad}: runtime policy: not JSON"):
        make_from_runtime_policy(bad)
    incomplete = write(tmp_path, {"meta": {"version": 1}}, "incomplete.json")
    with pytest.raises(FormatError, match=f"{incomplete}: runtime policy: missing"):
        make_from_runtime_policy(incomplete)
    baddigest = write(tmp_path, policy({"/a": ["XYZ"]}), "baddigest.json")
    with pytest.raises(FormatError, match=f"{baddigest}: .*bad digest"):
        make_from_runtime_policy(baddigest)
    with pytest.raises(FileError, match=r"absent\.json: cannot read"):
        make_from_runtime_policy(tmp_path / "absent.json")
