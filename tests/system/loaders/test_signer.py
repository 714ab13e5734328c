"""Naming the signer: ``signature_info(keyring=)`` and ``imaguard show/info --keyring``."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import imaguard

from .conftest import IMAGUARD, TIMEOUT

SUBJECT = "CN=Loader Test Signer,O=imaguard"


@dataclass(frozen=True)
class Files:
    ring: Path
    other_ring: Path
    cert: x509.Certificate
    key_id: int
    other_key_id: int
    mine: Path
    theirs: Path
    unsigned: Path


@pytest.fixture
def files(tmp_path: Path, keys_dir: dict[str, Path], rsa_key: imaguard.PrivateKey) -> Files:
    ring = tmp_path / "ring"
    imaguard.generate_key("ecdsa-p256", common_name="Loader Test Signer").write(ring)
    key = imaguard.load_private_key(ring / "private.pem")
    cert = x509.load_der_x509_certificate((ring / "cert.der").read_bytes())
    mine = tmp_path / "mine"
    theirs = tmp_path / "theirs"
    unsigned = tmp_path / "unsigned"
    for p in (mine, theirs, unsigned):
        p.write_bytes(b"#!/bin/sh\necho hi\n")
    imaguard.sign_file(mine, key, "sha256")
    imaguard.sign_file(theirs, rsa_key, "sha256")  # a key whose certificate is not in ring
    return Files(
        ring, keys_dir["rsa2048"], cert, key.key_id, rsa_key.key_id, mine, theirs, unsigned
    )


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(IMAGUARD), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r


def signer_line(f: Files) -> str:
    nb = f.cert.not_valid_before_utc.isoformat()
    na = f.cert.not_valid_after_utc.isoformat()
    return f"  signer: {SUBJECT} (key id {f.key_id:08x}, valid {nb} to {na}; named, not verified)"


def test_api_names_the_signer(files: Files) -> None:
    ring = imaguard.Keyring.load(files.ring / "cert.der")
    info = imaguard.signature_info(files.mine, keyring=ring)
    assert info.keyring_checked is True
    assert info.signer is not None
    assert info.signer.subject == SUBJECT
    assert info.signer.key_id == files.key_id == info.key_id
    assert info.signer.not_before == files.cert.not_valid_before_utc.isoformat()
    assert info.signer.not_after == files.cert.not_valid_after_utc.isoformat()
    doc = info.to_dict()
    assert doc["signer"]["subject"] == SUBJECT
    assert doc["signer"]["key_id"] == f"{files.key_id:08x}"

    other = imaguard.signature_info(files.theirs, keyring=ring)
    assert (other.keyring_checked, other.signer) == (True, None)
    assert other.key_id == files.other_key_id
    assert other.to_dict()["signer"] is None

    bare = imaguard.signature_info(files.mine)
    assert (bare.keyring_checked, bare.signer) == (False, None)
    assert "signer" not in bare.to_dict()
    # A keyring given as a directory works too.
    by_dir = imaguard.signature_info(files.mine, keyring=files.ring)
    assert by_dir.signer is not None
    assert by_dir.signer.subject == SUBJECT


@pytest.mark.parametrize("verb", ["info", "show"])
def test_cli_prints_the_signer_or_says_no_certificate(files: Files, verb: str) -> None:
    r = cli(verb, "--keyring", files.ring, files.mine, files.theirs)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{files.mine}: signed, key id {files.key_id:08x}, sha256")
    assert lines[1] == signer_line(files)
    assert lines[2].startswith(f"{files.theirs}: signed, key id {files.other_key_id:08x}")
    assert lines[3] == (
        f"  signer: no certificate in the keyring has key id {files.other_key_id:08x}"
    )
    assert len(lines) == 4


def test_cli_without_keyring_names_no_signer(files: Files) -> None:
    r = cli("info", files.mine, files.theirs)
    assert r.returncode == 0, r.stderr
    assert "signer" not in r.stdout
    assert len(r.stdout.splitlines()) == 2
    r = cli("info", "--json", files.mine, files.theirs)
    docs = json.loads(r.stdout)
    assert [("signer" in d) for d in docs] == [False, False]


def test_cli_json_signer(files: Files) -> None:
    r = cli("info", "--json", "--keyring", files.ring, files.mine, files.theirs, files.unsigned)
    docs: list[dict[str, Any]] = json.loads(r.stdout)
    assert [d["path"] for d in docs] == [str(files.mine), str(files.theirs), str(files.unsigned)]
    signer = docs[0]["signer"]
    assert signer["subject"] == SUBJECT
    assert signer["key_id"] == f"{files.key_id:08x}"
    assert signer["not_before"] == files.cert.not_valid_before_utc.isoformat()
    assert signer["not_after"] == files.cert.not_valid_after_utc.isoformat()
    assert docs[1]["signer"] is None  # a keyring was consulted; no certificate has that key
    assert docs[2]["signer"] is None  # nothing stored at all


def test_cli_several_keyrings(files: Files) -> None:
    r = cli(
        "show",
        "--json",
        "--keyring",
        files.other_ring,
        "--keyring",
        files.ring,
        files.mine,
        files.theirs,
    )
    docs = json.loads(r.stdout)
    assert docs[0]["signer"]["subject"] == SUBJECT
    assert docs[1]["signer"]["key_id"] == f"{files.other_key_id:08x}"
    assert docs[1]["signer"]["subject"] == "CN=imaguard signing key,O=imaguard"
