"""Signatures (0x03 v2) across imaguard and evmctl 1.4, both directions.

The matrix is {RSA-2048, ECDSA P-256} x {sha1, sha256, sha384, sha512} (fixtures
``key_type`` and ``algo`` in conftest.py), for the three places a value can live:
a ``FILE.sig`` sidecar, ``security.ima`` and ``user.ima`` (spec evmctl.md §3, §4).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import imaguard

if TYPE_CHECKING:
    from helpers.interop import KeyFiles, Tools

pytestmark = pytest.mark.interop

# kernel enum hash_algo ids (spec evmctl.md §4)
HASH_ALGO_IDS = {"sha1": 2, "sha256": 4, "sha384": 5, "sha512": 6}


def _sig_path(path: Path) -> Path:
    return path.with_name(path.name + ".sig")


def _key_id(value: bytes) -> int:
    return int.from_bytes(value[3:7], "big")


def _assert_v2_header(value: bytes, algo: str) -> None:
    assert value[:3] == bytes([0x03, 0x02, HASH_ALGO_IDS[algo]]), value[:9].hex()
    assert int.from_bytes(value[7:9], "big") == len(value) - 9, value[:9].hex()


def _assert_passes(verdict: imaguard.Verdict, algo: str, key_id: int) -> None:
    assert verdict.status == imaguard.Status.PASS, verdict.describe()
    assert verdict.cause is None
    assert verdict.algorithm == algo
    assert verdict.key_id == key_id
    assert verdict.value_type == 0x03


def _assert_invalid_signature(verdict: imaguard.Verdict) -> None:
    assert verdict.status == imaguard.Status.FAIL, verdict.describe()
    assert verdict.cause == imaguard.Cause.INVALID_SIGNATURE, verdict.describe()


# -- (a) imaguard signs, evmctl verifies: FILE.sig -----------------------------------------


def test_imaguard_sigfile_verified_by_evmctl(
    tools: Tools, signer: KeyFiles, algo: str, sample: Path
) -> None:
    key = imaguard.load_private_key(signer.private_pem)
    value = imaguard.sign_file(sample, key, algo, store="sigfile")
    stored = _sig_path(sample).read_bytes()
    assert stored == value.serialize()
    _assert_v2_header(stored, algo)

    tools.assert_evmctl_accepts(sample, signer.cert_der, sigfile=True)
    tools.tamper(sample)
    tools.assert_evmctl_rejects_content(sample, signer.cert_der, sigfile=True)


def test_imaguard_cli_sigfile_verified_by_evmctl(
    tools: Tools, signer: KeyFiles, algo: str, sample: Path
) -> None:
    r = tools.imaguard(
        "sign", "--key", signer.private_pem, "-a", algo, "--store", "sigfile", sample
    )
    assert r.returncode == 0, r.explain()
    _assert_v2_header(_sig_path(sample).read_bytes(), algo)

    tools.assert_evmctl_accepts(sample, signer.cert_der, sigfile=True)
    tools.tamper(sample)
    tools.assert_evmctl_rejects_content(sample, signer.cert_der, sigfile=True)


# -- (b) evmctl signs, imaguard verifies: FILE.sig and the printed value --------------------


def test_evmctl_sigfile_verified_by_imaguard(
    tools: Tools, signer: KeyFiles, algo: str, sample: Path
) -> None:
    printed = tools.evmctl_sign(sample, signer.private_pem, algo, sigfile=True)
    sig = _sig_path(sample)
    assert sig.read_bytes() == printed, "evmctl's .sig differs from the value it printed"
    _assert_v2_header(printed, algo)
    ring = signer.ring
    key_id = _key_id(printed)

    _assert_passes(imaguard.appraise(sample, ring, store="sigfile"), algo, key_id)
    r = tools.imaguard("verify", "--cert", signer.cert_der, "--store", "sigfile", sample)
    assert r.returncode == 0, r.explain()

    tools.tamper(sample)
    _assert_invalid_signature(imaguard.appraise(sample, ring, store="sigfile"))
    r = tools.imaguard("verify", "--cert", signer.cert_der, "--store", "sigfile", sample)
    assert r.returncode == 1, r.explain()
    assert "invalid-signature" in r.stderr, r.explain()


def test_evmctl_sigfile_also_in_security_ima_read_by_imaguard(
    tools: Tools, root_only: None, signer: KeyFiles, algo: str, sample: Path
) -> None:
    """evmctl 1.4 ``--sigfile`` writes security.ima as well (spec §3); imaguard reads both."""
    printed = tools.evmctl_sign(sample, signer.private_pem, algo, sigfile=True)
    assert tools.getfattr(sample, "security.ima") == printed
    ring = signer.ring

    _assert_passes(imaguard.appraise(sample, ring, store="xattr"), algo, _key_id(printed))
    _assert_passes(imaguard.appraise(sample, ring), algo, _key_id(printed))  # default as root
    tools.tamper(sample)
    _assert_invalid_signature(imaguard.appraise(sample, ring, store="xattr"))
    _assert_invalid_signature(imaguard.appraise(sample, ring, store="sigfile"))


def test_evmctl_printed_value_verified_by_imaguard(
    tools: Tools, signer: KeyFiles, algo: str, sample: Path
) -> None:
    value = tools.evmctl_sign(sample, signer.private_pem, algo, dry_run=True)
    assert not _sig_path(sample).exists()
    _assert_v2_header(value, algo)
    ring = signer.ring
    key_id = _key_id(value)
    content = sample.read_bytes()

    _assert_passes(imaguard.appraise(sample, ring, value=value), algo, key_id)
    _assert_passes(imaguard.appraise(content, ring, value=value), algo, key_id)
    info = imaguard.signature_info(content, value=value)
    assert (info.algorithm, info.key_id, info.signature_size) == (algo, key_id, len(value) - 9)

    tools.tamper(sample)
    _assert_invalid_signature(imaguard.appraise(sample, ring, value=value))
    _assert_invalid_signature(imaguard.appraise(sample.read_bytes(), ring, value=value))


def test_evmctl_value_with_corrupted_signature_fails_in_imaguard(
    tools: Tools, signer: KeyFiles, sample: Path
) -> None:
    value = bytearray(tools.evmctl_sign(sample, signer.private_pem, "sha256", dry_run=True))
    value[-5] ^= 0x40  # inside the signature, not the header
    verdict = imaguard.appraise(sample, signer.ring, value=bytes(value))
    assert verdict.status == imaguard.Status.FAIL, verdict.describe()
    assert verdict.cause == imaguard.Cause.INVALID_SIGNATURE


# -- the values themselves ----------------------------------------------------------------


def test_signature_value_layout_matches_evmctl(
    tools: Tools, signer: KeyFiles, algo: str, sample: Path
) -> None:
    """RSA PKCS#1 v1.5 is deterministic: the whole value must equal evmctl's, byte for byte.
    ECDSA uses a random k: type, version, algorithm and key id must be equal."""
    key = imaguard.load_private_key(signer.private_pem)
    ours = imaguard.sign_file(sample, key, algo, store="sigfile").serialize()
    theirs = tools.evmctl_sign(sample, signer.private_pem, algo, dry_run=True)
    _assert_v2_header(ours, algo)
    if signer.is_rsa:
        assert ours.hex() == theirs.hex()
    else:
        assert ours[:7].hex() == theirs[:7].hex()
        assert ours[9] == theirs[9] == 0x30  # DER SEQUENCE { r, s }
        assert 0x45 <= len(ours) - 9 <= 0x48


# -- (c) security.ima ---------------------------------------------------------------------


def test_imaguard_security_ima_verified_by_evmctl(
    tools: Tools, root_only: None, signer: KeyFiles, algo: str, sample: Path
) -> None:
    key = imaguard.load_private_key(signer.private_pem)
    value = imaguard.sign_file(sample, key, algo)  # default store as root: security.ima
    assert tools.getfattr(sample, "security.ima") == value.serialize()
    assert tools.getfattr(sample, "user.ima") is None
    tools.assert_evmctl_accepts(sample, signer.cert_der)
    tools.tamper(sample)
    tools.assert_evmctl_rejects_content(sample, signer.cert_der)

    # The command's default store as root is security.ima too: re-sign the new content.
    r = tools.imaguard("sign", "--key", signer.private_pem, "-a", algo, sample)
    assert r.returncode == 0, r.explain()
    stored = tools.getfattr(sample, "security.ima")
    assert stored is not None
    _assert_v2_header(stored, algo)
    assert not _sig_path(sample).exists()
    tools.assert_evmctl_accepts(sample, signer.cert_der)


def test_evmctl_security_ima_verified_by_imaguard(
    tools: Tools, root_only: None, signer: KeyFiles, algo: str, sample: Path
) -> None:
    printed = tools.evmctl_sign(sample, signer.private_pem, algo)
    assert tools.getfattr(sample, "security.ima") == printed
    ring = signer.ring

    _assert_passes(imaguard.appraise(sample, ring), algo, _key_id(printed))
    r = tools.imaguard("verify", "--cert", signer.cert_der, "--store", "xattr", sample)
    assert r.returncode == 0, r.explain()

    tools.tamper(sample)
    _assert_invalid_signature(imaguard.appraise(sample, ring, store="xattr"))
    r = tools.imaguard("verify", "--cert", signer.cert_der, "--store", "xattr", sample)
    assert r.returncode == 1, r.explain()
    assert "invalid-signature" in r.stderr, r.explain()


# -- (c) user.ima -------------------------------------------------------------------------


def test_imaguard_user_ima_verified_by_evmctl(
    tools: Tools, signer: KeyFiles, algo: str, sample: Path
) -> None:
    r = tools.imaguard("sign", "--key", signer.private_pem, "-a", algo, "--xattr-user", sample)
    assert r.returncode == 0, r.explain()
    stored = tools.getfattr(sample, "user.ima")
    assert stored is not None
    _assert_v2_header(stored, algo)
    assert tools.getfattr(sample, "security.ima") is None  # --xattr-user writes only user.ima

    tools.assert_evmctl_accepts(sample, signer.cert_der, xattr_user=True)
    tools.tamper(sample)
    tools.assert_evmctl_rejects_content(sample, signer.cert_der, xattr_user=True)


def test_evmctl_user_ima_verified_by_imaguard(
    tools: Tools, signer: KeyFiles, algo: str, sample: Path
) -> None:
    printed = tools.evmctl_sign(sample, signer.private_pem, algo, xattr_user=True)
    assert tools.getfattr(sample, "user.ima") == printed
    ring = signer.ring

    _assert_passes(imaguard.appraise(sample, ring, store="user-xattr"), algo, _key_id(printed))
    r = tools.imaguard("verify", "--cert", signer.cert_der, "--xattr-user", sample)
    assert r.returncode == 0, r.explain()

    tools.tamper(sample)
    _assert_invalid_signature(imaguard.appraise(sample, ring, store="user-xattr"))
    r = tools.imaguard("verify", "--cert", signer.cert_der, "--xattr-user", sample)
    assert r.returncode == 1, r.explain()


# -- (f) key ids --------------------------------------------------------------------------


def test_key_ids_agree_with_evmctl(tools: Tools, signer: KeyFiles, sample: Path) -> None:
    value = tools.evmctl_sign(sample, signer.private_pem, "sha256", dry_run=True)
    evmctl_id = _key_id(value)
    (cert,) = imaguard.load_certificates(signer.cert_der)
    (cert_pem,) = imaguard.load_certificates(signer.cert_pem)
    key = imaguard.load_private_key(signer.private_pem)

    assert f"{cert.key_id:08x}" == f"{evmctl_id:08x}"
    assert f"{cert.public_key_id:08x}" == f"{evmctl_id:08x}"
    assert f"{cert_pem.key_id:08x}" == f"{evmctl_id:08x}"
    assert f"{key.key_id:08x}" == f"{evmctl_id:08x}"
    assert f"{key.with_certificate(cert).key_id:08x}" == f"{evmctl_id:08x}"

    # evmctl --keyid-from-cert takes the last 4 bytes of the SKID: the kernel's id.
    r = tools.checked(
        "evmctl",
        "ima_sign",
        "-n",
        "--keyid-from-cert",
        signer.cert_der,
        "--key",
        signer.private_pem,
        sample,
    )
    skid_value = bytes.fromhex(r.out.strip())
    assert cert.skid_key_id == _key_id(skid_value) == evmctl_id
    # and evmctl's verbose log names the same id for the certificate it loads
    v = tools.evmctl_sign(sample, signer.private_pem, "sha256", sigfile=True)
    verified = tools.assert_evmctl_accepts(sample, signer.cert_der, sigfile=True)
    assert f"keyid: {evmctl_id:08x}" in verified.stderr
    assert v[3:7] == value[3:7]


def test_wrong_key_is_unknown_to_both(
    tools: Tools, interop_keys: dict[str, KeyFiles], sample: Path
) -> None:
    """A value signed by one key and checked against the other key's certificate."""
    rsa, ec = interop_keys["rsa2048"], interop_keys["ecdsa-p256"]
    key = imaguard.load_private_key(rsa.private_pem)
    imaguard.sign_file(sample, key, "sha256", store="sigfile")
    r = tools.evmctl_verify(sample, ec.cert_der, sigfile=True)
    assert r.returncode == 1, r.explain()
    assert "unknown keyid" in r.stderr, r.explain()
    assert "verification is OK" not in r.stderr, r.explain()

    value = tools.evmctl_sign(sample, ec.private_pem, "sha256", dry_run=True)
    verdict = imaguard.appraise(sample, rsa.ring, value=value)
    assert verdict.status == imaguard.Status.UNKNOWN_KEY, verdict.describe()
    assert verdict.key_id == _key_id(value)


def test_evmctl_recursive_signing_verified_by_imaguard_cli(
    tools: Tools, signer: KeyFiles, make_file: Callable[[str, int], Path]
) -> None:
    """``evmctl ima_sign -r --sigfile DIR`` then ``imaguard verify -r --store sigfile DIR``."""
    files = [make_file(f"tree-{i}.bin", 1000 * i + 1) for i in range(4)]
    tree = files[0].parent
    r = tools.checked(
        "evmctl", "ima_sign", "-r", "--sigfile", "-a", "sha256", "--key", signer.private_pem, tree
    )
    for f in files:
        assert _sig_path(f).exists(), r.explain()
    v = tools.imaguard("verify", "--cert", signer.cert_der, "--store", "sigfile", "-r", tree)
    assert v.returncode == 0, v.explain()
    tools.tamper(files[2])
    v = tools.imaguard("verify", "--cert", signer.cert_der, "--store", "sigfile", "-r", tree)
    assert v.returncode == 1, v.explain()
    assert files[2].name in v.stderr, v.explain()
