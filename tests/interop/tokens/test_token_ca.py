"""Certificates and requests for keys on a token, and a CA whose key is on a token."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

import imaguard
from helpers.interop import Tools
from interop.tokens.softhsm import Token

pytestmark = pytest.mark.interop


def test_token_key_certified_by_a_file_ca(
    tools: Tools, token: Token, pin_env: str, tmp_path: Path
) -> None:
    r = tools.imaguard("keys", "ca", "--out", tmp_path / "ca")
    assert r.returncode == 0, r.explain()
    out = tmp_path / "issued"
    r = tools.imaguard(
        "keys",
        "generate",
        "--key",
        token.uri("ec-key"),
        "--out",
        out,
        "--ca",
        tmp_path / "ca" / "ca-key.pem",
        "--ca-cert",
        tmp_path / "ca" / "ca.pem",
    )
    assert r.returncode == 0, r.explain()
    assert sorted(p.name for p in out.iterdir()) == ["cert.der", "cert.pem"]
    v = tools.openssl("verify", "-CAfile", tmp_path / "ca" / "ca.pem", out / "cert.pem")
    assert v.returncode == 0, v.explain()
    # the token key signs; the CA-issued certificate verifies it (kernel key id from the SKID)
    target = tmp_path / "prog"
    target.write_bytes(b"\x7fELF token-signed")
    r = tools.imaguard(
        "sign",
        "--store",
        "sigfile",
        "--key",
        token.uri("ec-key"),
        "--cert",
        out / "cert.der",
        target,
    )
    assert r.returncode == 0, r.explain()
    tools.assert_evmctl_accepts(target, out / "cert.der", sigfile=True)


def test_ca_key_on_the_token(tools: Tools, token: Token, pin_env: str, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    r = tools.imaguard("keys", "ca", "--key", token.uri("rsa-key"), "--out", ca_dir)
    assert r.returncode == 0, r.explain()
    assert r.out.split() == [str(ca_dir / "ca.pem"), str(ca_dir / "ca.der")]  # no key file
    leaf = tmp_path / "leaf"
    r = tools.imaguard(
        "keys",
        "generate",
        "--type",
        "ecdsa-p384",
        "--out",
        leaf,
        "--ca",
        token.uri("rsa-key"),
        "--ca-cert",
        ca_dir / "ca.pem",
    )
    assert r.returncode == 0, r.explain()
    v = tools.openssl("verify", "-CAfile", ca_dir / "ca.pem", leaf / "cert.pem")
    assert (v.returncode, v.out.strip()) == (0, f"{leaf / 'cert.pem'}: OK"), v.explain()
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_csr_for_a_token_key(tools: Tools, token: Token, pin_env: str, tmp_path: Path) -> None:
    req = tmp_path / "req.pem"
    r = tools.imaguard("keys", "csr", "--key", token.uri("rsa-key"), "--out", req)
    assert r.returncode == 0, r.explain()
    v = tools.openssl("req", "-verify", "-in", req, "-noout")
    assert v.returncode == 0, v.explain()
    csr = x509.load_pem_x509_csr(req.read_bytes())
    assert csr.is_signature_valid
    key = imaguard.crypto.load_signing_key(token.uri("rsa-key"))
    assert csr.public_key().public_numbers() == key.public_key.public_numbers()  # type: ignore[union-attr]
    assert csr.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


def test_self_signed_certificate_for_a_token_key(
    tools: Tools, token: Token, pin_env: str, tmp_path: Path
) -> None:
    out = tmp_path / "self"
    r = tools.imaguard("keys", "generate", "--key", token.uri("ec-key"), "--out", out)
    assert r.returncode == 0, r.explain()
    v = tools.openssl("verify", "-CAfile", out / "cert.pem", out / "cert.pem")
    assert v.returncode == 0, v.explain()
