"""fs-verity digests and sigv3 (0x06) signatures, checked against independent tools.

* ``fsverity digest`` (fsverity-utils, installed by ``make test``) is the oracle for the
  digest of every size class: empty, one block, a full tree level, several levels.
* ``openssl dgst -verify`` checks that a sigv3 signature signs H(0x06 || algo || digest),
  the ``ima_file_id`` of spec kernel-ima.md §3.5.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

import imaguard
from imaguard.appraise._files import open_target
from imaguard.appraise._verity import fsverity_digest, fsverity_digest_bytes
from imaguard.core import Guard, MemoryAudit
from imaguard.formats.hashalgo import by_name
from imaguard.formats.xattr import SignatureValue, XattrType, file_id
from imaguard.policy import PolicySet, parse_policy

pytestmark = pytest.mark.interop

SIZES = [0, 1, 4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, 129 * 4096, (1 << 20) + 3]


def _tool() -> str:
    path = shutil.which("fsverity")
    assert path, "fsverity (package fsverity) is missing: run make test, which installs it"
    return path


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize("size", SIZES)
def test_digest_equals_fsverity_digest(tmp_path: Path, size: int, algorithm: str) -> None:
    data = random.Random(size).randbytes(size)
    target = tmp_path / "f"
    target.write_bytes(data)
    out = subprocess.run(
        [_tool(), "digest", f"--hash-alg={algorithm}", str(target)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()[0]
    want = bytes.fromhex(out.split(":", 1)[1])
    with open_target(target) as ref:
        assert fsverity_digest(ref, algorithm) == want
    assert fsverity_digest_bytes(data, algorithm) == want


def test_other_algorithms_are_refused() -> None:
    with pytest.raises(imaguard.FormatError, match="sha256 and sha512"):
        fsverity_digest_bytes(b"x", "sha1")


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256"])
def test_sigv3_signature_verifies_with_openssl(
    tmp_path: Path, keys_dir: dict[str, Path], key_type: str
) -> None:
    target = tmp_path / "f"
    target.write_bytes(random.Random(7).randbytes(20_000))
    key = imaguard.load_private_key(keys_dir[key_type] / "private.pem")
    value = imaguard.sign_file(target, key, "sha256", store="sigfile", sigv3=True)
    raw = Path(f"{target}.sig").read_bytes()
    parsed = SignatureValue.parse(raw)
    assert parsed.type == XattrType.IMA_VERITY_DIGSIG
    assert parsed.version == 3
    assert raw[:3] == b"\x06\x03\x04"
    assert parsed == value
    digest = fsverity_digest_bytes(target.read_bytes(), "sha256")
    (tmp_path / "file_id").write_bytes(file_id(by_name("sha256"), digest))
    (tmp_path / "sig").write_bytes(parsed.signature)
    pub = subprocess.run(
        ["openssl", "x509", "-in", str(keys_dir[key_type] / "cert.pem"), "-pubkey", "-noout"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    (tmp_path / "pub.pem").write_bytes(pub)
    ok = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(tmp_path / "pub.pem"),
            "-signature",
            str(tmp_path / "sig"),
            str(tmp_path / "file_id"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "Verified OK" in ok.stdout


def test_appraise_sigv3(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"a" * 9000)
    imaguard.sign_file(target, rsa_key, store="sigfile", sigv3=True)
    v = imaguard.appraise(target, rsa_ring, require="verity", store="sigfile")
    assert v.passed
    assert v.value_type == 0x06
    # An IMA signature is required: a sigv3 value does not do (spec §3.8 step 4).
    v = imaguard.appraise(target, rsa_ring, require="signature", store="sigfile")
    assert v.cause == "IMA-signature-required"
    # Tampered content: the fs-verity digest changes.
    with open(target, "r+b") as f:
        f.write(b"b")
    v = imaguard.appraise(target, rsa_ring, require="verity", store="sigfile")
    assert not v.passed
    assert v.cause == "invalid-verity-signature"
    # A v2 signature where sigv3 is required.
    imaguard.sign_file(target, rsa_key, store="sigfile")
    v = imaguard.appraise(target, rsa_ring, require="verity", store="sigfile")
    assert v.cause == "verity-signature-required"
    Path(f"{target}.sig").unlink()
    v = imaguard.appraise(target, rsa_ring, require="verity", store="sigfile")
    assert v.status == "no-xattr"
    assert v.cause == "verity-signature-required"


def test_sigv3_requires_a_verity_algorithm(tmp_path: Path, rsa_key: imaguard.PrivateKey) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"x")
    with pytest.raises(imaguard.UsageError, match="sha256 or sha512"):
        imaguard.sign_file(target, rsa_key, "sha384", store="sigfile", sigv3=True)


def test_guard_enforces_sigv3_rules(
    tmp_path: Path, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    pset = PolicySet()
    pset.add(
        "verity", parse_policy("appraise func=BPRM_CHECK digest_type=verity appraise_type=sigv3\n")
    )
    guard = Guard(pset, rsa_ring, store="sigfile", audit=MemoryAudit())
    target = tmp_path / "tool"
    target.write_bytes(b"#!/bin/sh\nexit 0\n")
    imaguard.sign_file(target, rsa_key, store="sigfile")
    d = guard.process(target, "BPRM_CHECK")
    assert not d.allowed
    assert d.actions["appraise"].cause == "verity-signature-required"
    imaguard.sign_file(target, rsa_key, store="sigfile", sigv3=True)
    d = guard.process(target, "BPRM_CHECK")
    assert d.allowed
    assert d.verdict is not None
    assert d.verdict.value_type == 0x06
    guard.close()


def test_cli_sign_sigv3(tmp_path: Path, keys_dir: dict[str, Path]) -> None:
    from imaguard.cli import main

    target = tmp_path / "f"
    target.write_bytes(b"data\n")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "sign",
                "--key",
                str(keys_dir["rsa2048"] / "private.pem"),
                "--store",
                "sigfile",
                "--sigv3",
                str(target),
            ]
        )
    assert e.value.code == 0
    assert Path(f"{target}.sig").read_bytes()[:2] == b"\x06\x03"
