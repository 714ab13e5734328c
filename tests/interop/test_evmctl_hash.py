"""Digest values (0x01 and 0x04) across imaguard and ``evmctl ima_hash``.

evmctl cannot verify a digest value (``ima_verify`` says "xattr ima has no signature",
spec evmctl.md §4), so the oracle is the value ``evmctl ima_hash -n`` prints, compared
byte for byte, and values evmctl writes are appraised by imaguard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import imaguard

if TYPE_CHECKING:
    from helpers.interop import KeyFiles, Tools

pytestmark = pytest.mark.interop

# Layout per algorithm (spec evmctl.md §4): sha1 (and md5) use 0x01 with no algorithm byte;
# every other algorithm 0x04 + kernel hash_algo id.
PREFIX = {
    "sha1": "01",
    "sha256": "0404",
    "sha384": "0405",
    "sha512": "0406",
    "md5": "01",
    "sha224": "0407",
}
REQUIRED_ALGOS = ("sha1", "sha256", "sha384", "sha512")
EXTRA_ALGOS = ("md5", "sha224")
SIZES = (0, 1, 4095, 4096, 4097, 1024 * 1024 + 13)


def _expected(algo: str, data: bytes) -> str:
    return PREFIX[algo] + hashlib.new(algo, data).hexdigest()


@pytest.mark.parametrize("hash_algo", REQUIRED_ALGOS + EXTRA_ALGOS)
def test_printed_digest_values_agree(
    tools: Tools, hash_algo: str, make_file: Callable[[str, int], Path]
) -> None:
    """``evmctl ima_hash -n`` == ``imaguard hash -n`` == the layout, for several sizes."""
    files = [make_file(f"f{size}.bin", size) for size in SIZES]
    r = tools.imaguard("hash", "-n", "-a", hash_algo, *files)
    assert r.returncode == 0, r.explain()
    ours = {}
    for line in r.out.splitlines():
        value, _, name = line.partition("  ")
        ours[name] = value.strip().lower()
    assert len(ours) == len(files), r.explain()

    for f in files:
        theirs = tools.evmctl_hash(f, hash_algo).hex()
        assert theirs == _expected(hash_algo, f.read_bytes()), f"{f.name}: evmctl {theirs}"
        assert ours[str(f)] == theirs, f"{f.name}: imaguard {ours[str(f)]} != evmctl {theirs}"
        assert imaguard.hash_file(f, hash_algo).value.hex() == theirs[len(PREFIX[hash_algo]) :]


@pytest.mark.parametrize("hash_algo", REQUIRED_ALGOS)
def test_store_digest_writes_evmctl_bytes(
    tools: Tools, root_only: None, hash_algo: str, sample: Path
) -> None:
    theirs = tools.evmctl_hash(sample, hash_algo)
    value = imaguard.store_digest(sample, hash_algo)  # default store as root: security.ima
    assert value.serialize().hex() == theirs.hex()
    stored = tools.getfattr(sample, "security.ima")
    assert stored is not None, "store_digest wrote no security.ima"
    assert stored.hex() == theirs.hex()


@pytest.mark.parametrize("hash_algo", REQUIRED_ALGOS)
def test_store_digest_user_xattr_and_sigfile_hold_evmctl_bytes(
    tools: Tools, hash_algo: str, sample: Path
) -> None:
    theirs = tools.evmctl_hash(sample, hash_algo)
    imaguard.store_digest(sample, hash_algo, store="user-xattr")
    stored = tools.getfattr(sample, "user.ima")
    assert stored is not None
    assert stored.hex() == theirs.hex()
    imaguard.store_digest(sample, hash_algo, store="sigfile")
    assert sample.with_name(sample.name + ".sig").read_bytes().hex() == theirs.hex()


@pytest.mark.parametrize("hash_algo", REQUIRED_ALGOS)
def test_imaguard_cli_hash_writes_evmctl_bytes(
    tools: Tools, root_only: None, hash_algo: str, sample: Path
) -> None:
    theirs = tools.evmctl_hash(sample, hash_algo)
    r = tools.imaguard("hash", "-a", hash_algo, sample)  # default store as root
    assert r.returncode == 0, r.explain()
    assert r.out.split()[0].lower() == theirs.hex()
    stored = tools.getfattr(sample, "security.ima")
    assert stored is not None
    assert stored.hex() == theirs.hex()


@pytest.mark.parametrize("hash_algo", REQUIRED_ALGOS)
def test_evmctl_written_digest_appraised_by_imaguard(
    tools: Tools,
    root_only: None,
    hash_algo: str,
    sample: Path,
    interop_keys: dict[str, KeyFiles],
) -> None:
    printed = tools.evmctl_hash(sample, hash_algo, dry_run=False)
    assert tools.getfattr(sample, "security.ima") == printed
    ring = interop_keys["rsa2048"].ring
    cert = interop_keys["rsa2048"].cert_der

    verdict = imaguard.appraise(sample, ring, require="any")
    assert verdict.status == imaguard.Status.PASS, verdict.describe()
    assert verdict.algorithm == hash_algo
    assert verdict.value_type == printed[0]
    assert verdict.digest == hashlib.new(hash_algo, sample.read_bytes()).digest()
    # A bare digest is not a signature (the kernel's default for signed policies).
    verdict = imaguard.appraise(sample, ring)
    assert verdict.status == imaguard.Status.FAIL
    assert verdict.cause == imaguard.Cause.SIGNATURE_REQUIRED
    r = tools.imaguard("verify", "--cert", cert, "--allow-digest", "--store", "xattr", sample)
    assert r.returncode == 0, r.explain()

    tools.tamper(sample)
    verdict = imaguard.appraise(sample, ring, require="any")
    assert verdict.status == imaguard.Status.FAIL, verdict.describe()
    assert verdict.cause == imaguard.Cause.INVALID_HASH, verdict.describe()
    r = tools.imaguard("verify", "--cert", cert, "--allow-digest", "--store", "xattr", sample)
    assert r.returncode == 1, r.explain()
    assert "invalid-hash" in r.stderr, r.explain()


@pytest.mark.parametrize("hash_algo", REQUIRED_ALGOS)
def test_evmctl_user_xattr_digest_appraised_by_imaguard(
    tools: Tools, hash_algo: str, sample: Path, interop_keys: dict[str, KeyFiles]
) -> None:
    printed = tools.evmctl_hash(sample, hash_algo, dry_run=False, xattr_user=True)
    assert tools.getfattr(sample, "user.ima") == printed
    ring = interop_keys["ecdsa-p256"].ring

    verdict = imaguard.appraise(sample, ring, require="any", store="user-xattr")
    assert verdict.status == imaguard.Status.PASS, verdict.describe()
    assert verdict.algorithm == hash_algo
    tools.tamper(sample)
    verdict = imaguard.appraise(sample, ring, require="any", store="user-xattr")
    assert verdict.status == imaguard.Status.FAIL, verdict.describe()
    assert verdict.cause == imaguard.Cause.INVALID_HASH, verdict.describe()


def test_evmctl_cannot_verify_a_digest_value(
    tools: Tools, sample: Path, interop_keys: dict[str, KeyFiles]
) -> None:
    """The documented limit of the oracle (spec §4): ima_verify refuses digest values, so the
    digest tests above compare bytes instead of asking evmctl for a verdict."""
    imaguard.store_digest(sample, "sha256", store="sigfile")
    r = tools.evmctl_verify(sample, interop_keys["rsa2048"].cert_der, sigfile=True)
    assert r.returncode == 1, r.explain()
    assert "has no signature" in r.stderr, r.explain()
    assert "verification is OK" not in r.stderr, r.explain()
