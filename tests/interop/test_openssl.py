"""openssl as a second, independent oracle, and keys/certificates made by openssl.

The bytes after the 9-byte v2 header are a plain signature of the file's content
(RSA PKCS#1 v1.5 or ECDSA DER), so ``openssl dgst -<algo> -verify`` checks them directly
(spec evmctl.md §1, §7). Certificates made by ``openssl req`` must work in both
directions with evmctl, and their key ids must agree (§3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import imaguard

if TYPE_CHECKING:
    from helpers.interop import KeyFiles, Run, Tools

pytestmark = pytest.mark.interop

HASH_ALGO_IDS = {"sha1": 2, "sha256": 4, "sha384": 5, "sha512": 6}
CUSTOM_SKID = "5eed0000000000000000000000000000c0ffee01"


def _openssl_verify(
    tools: Tools, algo: str, pub_pem: Path, signature: bytes, path: Path, scratch: Path
) -> Run:
    raw = scratch / f"{path.name}.{algo}.raw"
    raw.write_bytes(signature)
    return tools.openssl("dgst", f"-{algo}", "-verify", pub_pem, "-signature", raw, path)


def _assert_openssl_ok(run: Run) -> None:
    assert run.returncode == 0, run.explain()
    assert "Verified OK" in run.out, run.explain()


def _assert_openssl_fails(run: Run) -> None:
    assert run.returncode == 1, run.explain()
    assert "Verification failure" in run.out, run.explain()
    assert "Verified OK" not in run.out, run.explain()


def _v2_value(algo: str, key_id: int, signature: bytes) -> bytes:
    """A v2 signature value built by hand from the layout (spec evmctl.md §4)."""
    return (
        bytes([0x03, 0x02, HASH_ALGO_IDS[algo]])
        + key_id.to_bytes(4, "big")
        + len(signature).to_bytes(2, "big")
        + signature
    )


# -- (e) imaguard's signatures checked by openssl -----------------------------------------


def test_imaguard_signature_verifies_with_openssl(
    tools: Tools, signer: KeyFiles, algo: str, sample: Path, tmp_path: Path
) -> None:
    key = imaguard.load_private_key(signer.private_pem)
    imaguard.sign_file(sample, key, algo, store="sigfile")
    value = sample.with_name(sample.name + ".sig").read_bytes()
    signature = value[9:]
    assert int.from_bytes(value[7:9], "big") == len(signature)

    _assert_openssl_ok(_openssl_verify(tools, algo, signer.pub_pem, signature, sample, tmp_path))
    # The same signature does not verify under another digest algorithm.
    other = "sha512" if algo != "sha512" else "sha256"
    _assert_openssl_fails(
        _openssl_verify(tools, other, signer.pub_pem, signature, sample, tmp_path)
    )
    tools.tamper(sample)
    _assert_openssl_fails(_openssl_verify(tools, algo, signer.pub_pem, signature, sample, tmp_path))


@pytest.mark.parametrize("hash_algo", ["sha1", "sha256", "sha384", "sha512"])
def test_rsa_signature_is_deterministic_and_equals_openssl(
    tools: Tools,
    interop_keys: dict[str, KeyFiles],
    hash_algo: str,
    sample: Path,
    tmp_path: Path,
) -> None:
    rsa = interop_keys["rsa2048"]
    key = imaguard.load_private_key(rsa.private_pem)
    first = imaguard.sign_file(sample, key, hash_algo, store="sigfile").serialize()
    second = imaguard.sign_bytes(sample.read_bytes(), key, hash_algo).serialize()
    assert first == second, "RSA PKCS#1 v1.5 signatures must be deterministic"

    out = tmp_path / "openssl.sig"
    tools.checked("openssl", "dgst", f"-{hash_algo}", "-sign", rsa.private_pem, "-out", out, sample)
    assert first[9:].hex() == out.read_bytes().hex()
    assert len(first) == 9 + 256


def test_openssl_signature_accepted_by_imaguard(
    tools: Tools, signer: KeyFiles, algo: str, sample: Path, tmp_path: Path
) -> None:
    """A raw openssl signature in a hand-built v2 header: imaguard verifies it."""
    out = tmp_path / "openssl.sig"
    tools.checked("openssl", "dgst", f"-{algo}", "-sign", signer.private_pem, "-out", out, sample)
    (cert,) = imaguard.load_certificates(signer.cert_der)
    value = _v2_value(algo, cert.public_key_id, out.read_bytes())

    verdict = imaguard.appraise(sample, signer.ring, value=value)
    assert verdict.status == imaguard.Status.PASS, verdict.describe()
    assert verdict.algorithm == algo
    tools.tamper(sample)
    verdict = imaguard.appraise(sample, signer.ring, value=value)
    assert verdict.status == imaguard.Status.FAIL, verdict.describe()
    assert verdict.cause == imaguard.Cause.INVALID_SIGNATURE


# -- (f) keys and certificates made by openssl --------------------------------------------


@dataclass(frozen=True)
class OpensslKey:
    kind: str
    key_pem: Path
    cert_pem: Path
    cert_der: Path
    pub_pem: Path
    key_and_cert_pem: Path
    skid: bytes

    @property
    def ring(self) -> imaguard.Keyring:
        return imaguard.Keyring.load(self.cert_der)


_NEWKEY = {
    "rsa2048": ["-newkey", "rsa:2048"],
    "ecdsa-p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
}


def _make_openssl_key(tools: Tools, d: Path, kind: str, skid: str) -> OpensslKey:
    d.mkdir(parents=True, exist_ok=True)
    key, cert, der, pub = d / "key.pem", d / "cert.pem", d / "cert.der", d / "pub.pem"
    tools.checked(
        "openssl",
        "req",
        "-x509",
        *_NEWKEY[kind],
        "-nodes",
        "-subj",
        "/CN=t",
        "-addext",
        f"subjectKeyIdentifier={skid}",
        "-days",
        "2",
        "-keyout",
        key,
        "-out",
        cert,
    )
    tools.checked("openssl", "x509", "-in", cert, "-outform", "DER", "-out", der)
    pub.write_bytes(tools.checked("openssl", "x509", "-in", cert, "-pubkey", "-noout").stdout)
    both = d / "key-and-cert.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    text = tools.checked("openssl", "x509", "-in", cert, "-noout", "-ext", "subjectKeyIdentifier")
    lines = [ln.strip() for ln in text.out.splitlines() if ln.strip()]
    assert lines[0].startswith("X509v3 Subject Key Identifier"), text.explain()
    return OpensslKey(kind, key, cert, der, pub, both, bytes.fromhex(lines[1].replace(":", "")))


@pytest.fixture(scope="session")
def openssl_keys(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> dict[str, OpensslKey]:
    """``openssl req -x509 -newkey ... -addext subjectKeyIdentifier=hash`` (RSA and P-256)."""
    base = tmp_path_factory.mktemp("openssl-keys")
    return {kind: _make_openssl_key(tools, base / kind, kind, "hash") for kind in _NEWKEY}


@pytest.fixture(params=list(_NEWKEY))
def ossl(request: pytest.FixtureRequest, openssl_keys: dict[str, OpensslKey]) -> OpensslKey:
    return openssl_keys[request.param]


def test_openssl_cert_key_ids_agree(tools: Tools, ossl: OpensslKey, sample: Path) -> None:
    (cert,) = imaguard.load_certificates(ossl.cert_der)
    key = imaguard.load_private_key(ossl.key_pem)
    skid_id = int.from_bytes(ossl.skid[-4:], "big")
    evmctl_id = int.from_bytes(
        tools.evmctl_sign(sample, ossl.key_pem, "sha256", dry_run=True)[3:7], "big"
    )
    from_cert = tools.checked(
        "evmctl",
        "ima_sign",
        "-n",
        "--keyid-from-cert",
        ossl.cert_der,
        "--key",
        ossl.key_pem,
        sample,
    )
    evmctl_skid_id = int.from_bytes(bytes.fromhex(from_cert.out.strip())[3:7], "big")
    key_and_cert_id = int.from_bytes(
        tools.evmctl_sign(sample, ossl.key_and_cert_pem, "sha256", dry_run=True)[3:7], "big"
    )

    ids = {
        "openssl SKID": skid_id,
        "evmctl (public key)": evmctl_id,
        "evmctl --keyid-from-cert": evmctl_skid_id,
        "evmctl key+cert file": key_and_cert_id,
        "Certificate.key_id": cert.key_id,
        "Certificate.skid_key_id": cert.skid_key_id,
        "Certificate.public_key_id": cert.public_key_id,
        "PrivateKey.key_id": key.key_id,
        "PrivateKey(key+cert).key_id": imaguard.load_private_key(ossl.key_and_cert_pem).key_id,
    }
    assert len(set(ids.values())) == 1, {k: f"{v:08x}" for k, v in ids.items() if v is not None}


def test_openssl_cert_imaguard_signs_evmctl_verifies(
    tools: Tools, ossl: OpensslKey, algo: str, sample: Path
) -> None:
    key = imaguard.load_private_key(ossl.key_pem)
    imaguard.sign_file(sample, key, algo, store="sigfile")
    tools.assert_evmctl_accepts(sample, ossl.cert_der, sigfile=True)

    # The command, with the certificate giving the key id (SKID), as the kernel wants.
    r = tools.imaguard(
        "sign",
        "--key",
        ossl.key_pem,
        "--cert",
        ossl.cert_pem,
        "-a",
        algo,
        "--store",
        "sigfile",
        sample,
    )
    assert r.returncode == 0, r.explain()
    tools.assert_evmctl_accepts(sample, ossl.cert_der, sigfile=True)
    tools.tamper(sample)
    tools.assert_evmctl_rejects_content(sample, ossl.cert_der, sigfile=True)


def test_openssl_cert_evmctl_signs_imaguard_verifies(
    tools: Tools, ossl: OpensslKey, algo: str, sample: Path
) -> None:
    tools.evmctl_sign(sample, ossl.key_pem, algo, sigfile=True)
    for ring in (imaguard.Keyring.load(ossl.cert_der), imaguard.Keyring.load(ossl.cert_pem)):
        verdict = imaguard.appraise(sample, ring, store="sigfile")
        assert verdict.status == imaguard.Status.PASS, verdict.describe()
    r = tools.imaguard("verify", "--cert", ossl.cert_der, "--store", "sigfile", sample)
    assert r.returncode == 0, r.explain()

    tools.tamper(sample)
    verdict = imaguard.appraise(sample, ossl.ring, store="sigfile")
    assert verdict.status == imaguard.Status.FAIL, verdict.describe()
    assert verdict.cause == imaguard.Cause.INVALID_SIGNATURE
    r = tools.imaguard("verify", "--cert", ossl.cert_pem, "--store", "sigfile", sample)
    assert r.returncode == 1, r.explain()


def test_key_and_cert_file_signs_like_evmctl(tools: Tools, ossl: OpensslKey, sample: Path) -> None:
    """A PEM with the key and the certificate concatenated (evmctl takes the SKID from it)."""
    theirs = tools.evmctl_sign(sample, ossl.key_and_cert_pem, "sha384", dry_run=True)
    r = tools.imaguard(
        "sign", "--key", ossl.key_and_cert_pem, "-a", "sha384", "--store", "sigfile", sample
    )
    assert r.returncode == 0, r.explain()
    ours = sample.with_name(sample.name + ".sig").read_bytes()
    if ossl.kind.startswith("rsa"):
        assert ours.hex() == theirs.hex()
    else:
        assert ours[:7].hex() == theirs[:7].hex()
    tools.assert_evmctl_accepts(sample, ossl.cert_der, sigfile=True)


# -- a certificate whose SKID is not SHA-1 of the key (spec evmctl.md §3.1) ---------------


@pytest.fixture(scope="session")
def custom_skid_key(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> OpensslKey:
    return _make_openssl_key(
        tools, tmp_path_factory.mktemp("custom-skid"), "ecdsa-p256", CUSTOM_SKID
    )


def test_custom_skid_certificate(
    tools: Tools, custom_skid_key: OpensslKey, sample: Path, tmp_path: Path
) -> None:
    """The kernel looks keys up by SKID, evmctl by public-key hash; imaguard answers to both.

    evmctl itself cannot verify SKID-keyed signatures from such a certificate (it never
    reads the SKID when verifying), so openssl is the oracle for the signature bytes.
    """
    k = custom_skid_key
    assert k.skid.hex() == CUSTOM_SKID
    (cert,) = imaguard.load_certificates(k.cert_der)
    assert cert.skid_key_id == 0xC0FFEE01
    assert cert.key_id == 0xC0FFEE01
    assert cert.public_key_id != 0xC0FFEE01

    # evmctl with the plain key: public-key id; imaguard finds the certificate by it.
    plain = tools.evmctl_sign(sample, k.key_pem, "sha256", dry_run=True)
    assert int.from_bytes(plain[3:7], "big") == cert.public_key_id
    verdict = imaguard.appraise(sample, k.ring, value=plain)
    assert verdict.status == imaguard.Status.PASS, verdict.describe()

    # evmctl with key+cert: the SKID id (what the kernel looks up); imaguard finds it too.
    by_skid = tools.evmctl_sign(sample, k.key_and_cert_pem, "sha256", sigfile=True)
    assert int.from_bytes(by_skid[3:7], "big") == 0xC0FFEE01
    verdict = imaguard.appraise(sample, k.ring, store="sigfile")
    assert verdict.status == imaguard.Status.PASS, verdict.describe()
    # ... which evmctl's own verifier does not (documented limit of the oracle).
    r = tools.evmctl_verify(sample, k.cert_der, sigfile=True)
    assert r.returncode == 1, r.explain()
    assert "unknown keyid" in r.stderr, r.explain()

    # imaguard signing with the certificate writes the SKID id, like evmctl with key+cert;
    # openssl checks the signature bytes.
    r = tools.imaguard(
        "sign", "--key", k.key_pem, "--cert", k.cert_pem, "--store", "sigfile", sample
    )
    assert r.returncode == 0, r.explain()
    ours = sample.with_name(sample.name + ".sig").read_bytes()
    assert ours[:7] == by_skid[:7]
    _assert_openssl_ok(_openssl_verify(tools, "sha256", k.pub_pem, ours[9:], sample, tmp_path))
    tools.tamper(sample)
    _assert_openssl_fails(_openssl_verify(tools, "sha256", k.pub_pem, ours[9:], sample, tmp_path))
