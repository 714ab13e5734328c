"""``imaguard keys ca`` / ``keys generate --ca`` / ``keys csr``, judged by openssl.

``openssl verify -CAfile ca.pem cert.pem`` must accept the issued certificate (and refuse
it against another CA); ``openssl req -verify`` must accept the request. The extensions
the kernel's keyrings check are read back with cryptography and asserted one by one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

import imaguard
from helpers.interop import Tools

pytestmark = pytest.mark.interop

LEAF_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def make_ca(tools: Tools, out: Path, *extra: str) -> Path:
    r = tools.imaguard("keys", "ca", "--out", out, *extra)
    assert r.returncode == 0, r.explain()
    assert r.out.split() == [str(out / "ca-key.pem"), str(out / "ca.pem"), str(out / "ca.der")]
    return out


def assert_leaf(cert: x509.Certificate, ca: x509.Certificate) -> None:
    ext = cert.extensions
    basic = ext.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert (basic.critical, basic.value) == (
        True,
        x509.BasicConstraints(ca=False, path_length=None),
    )
    usage = ext.get_extension_for_oid(ExtensionOID.KEY_USAGE)
    assert (usage.critical, usage.value) == (True, LEAF_USAGE)
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CODE_SIGNING]
    assert ExtendedKeyUsageOID.CODE_SIGNING.dotted_string == "1.3.6.1.5.5.7.3.3"
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.issuer == ca.subject


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa-p256", "ecdsa-p384"])
def test_issued_certificate_verifies_with_openssl(
    tools: Tools, tmp_path: Path, key_type: str
) -> None:
    ca_dir = make_ca(tools, tmp_path / "ca", "--type", key_type)
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (basic.critical, basic.value.ca) == (True, True)
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ca_usage.key_cert_sign, ca_usage.digital_signature) == (True, False)
    assert ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    leaf = tmp_path / "leaf"
    r = tools.imaguard(
        "keys",
        "generate",
        "--type",
        "ecdsa-p256",
        "--out",
        leaf,
        "--cn",
        "pkg signer",
        "--ca",
        ca_dir / "ca-key.pem",
        "--ca-cert",
        ca_dir / "ca.pem",
    )
    assert r.returncode == 0, r.explain()
    assert r.out.split() == [str(leaf / n) for n in ("private.pem", "cert.pem", "cert.der")]
    assert "issued by: CN=imaguard local CA,O=imaguard" in r.stderr
    v = tools.openssl("verify", "-CAfile", ca_dir / "ca.pem", leaf / "cert.pem")
    assert (v.returncode, v.out.strip()) == (0, f"{leaf / 'cert.pem'}: OK"), v.explain()
    cert = x509.load_der_x509_certificate((leaf / "cert.der").read_bytes())
    assert_leaf(cert, ca)
    # the key and the certificate belong together, and sign with the certificate's id
    key = imaguard.load_private_key(leaf / "private.pem")
    assert key.with_certificate(imaguard.load_certificates(leaf / "cert.der")[0]).key_id == (
        imaguard.load_certificates(leaf / "cert.der")[0].key_id
    )


def test_another_ca_does_not_verify_it(tools: Tools, tmp_path: Path) -> None:
    ca_dir = make_ca(tools, tmp_path / "ca")
    other = make_ca(tools, tmp_path / "other")
    leaf = tmp_path / "leaf"
    r = tools.imaguard(
        "keys",
        "generate",
        "--out",
        leaf,
        "--ca",
        ca_dir / "ca-key.pem",
        "--ca-cert",
        ca_dir / "ca.der",
    )
    assert r.returncode == 0, r.explain()
    v = tools.openssl("verify", "-CAfile", other / "ca.pem", leaf / "cert.pem")
    assert v.returncode == 2, v.explain()
    assert "unable to get local issuer certificate" in v.out + v.stderr


def test_existing_key_certified_by_the_ca(tools: Tools, tmp_path: Path) -> None:
    ca_dir = make_ca(tools, tmp_path / "ca")
    mine = tmp_path / "mine"
    imaguard.generate_key("rsa2048").write(mine)
    before = (mine / "private.pem").read_bytes()
    out = tmp_path / "issued"
    r = tools.imaguard(
        "keys",
        "generate",
        "--key",
        mine / "private.pem",
        "--out",
        out,
        "--ca",
        ca_dir / "ca-key.pem",
        "--ca-cert",
        ca_dir / "ca.pem",
    )
    assert r.returncode == 0, r.explain()
    assert sorted(p.name for p in out.iterdir()) == ["cert.der", "cert.pem"]
    assert (mine / "private.pem").read_bytes() == before
    v = tools.openssl("verify", "-CAfile", ca_dir / "ca.pem", out / "cert.pem")
    assert v.returncode == 0, v.explain()
    issued = imaguard.load_certificates(out / "cert.der")[0]
    key = imaguard.load_private_key(mine / "private.pem")
    assert issued.public_key.public_numbers() == key.public_key.public_numbers()


def test_signed_with_an_issued_key_verifies_with_evmctl(tools: Tools, tmp_path: Path) -> None:
    ca_dir = make_ca(tools, tmp_path / "ca")
    leaf = tmp_path / "leaf"
    r = tools.imaguard(
        "keys",
        "generate",
        "--out",
        leaf,
        "--ca",
        ca_dir / "ca-key.pem",
        "--ca-cert",
        ca_dir / "ca.pem",
    )
    assert r.returncode == 0, r.explain()
    target = tmp_path / "prog"
    target.write_bytes(b"#!/bin/sh\necho signed\n")
    r = tools.imaguard(
        "sign",
        "--store",
        "sigfile",
        "--key",
        leaf / "private.pem",
        "--cert",
        leaf / "cert.der",
        target,
    )
    assert r.returncode == 0, r.explain()
    tools.assert_evmctl_accepts(target, leaf / "cert.der", sigfile=True)


def test_csr_verifies_and_requests_the_extensions(tools: Tools, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    imaguard.generate_key("ecdsa-p256").write(mine)
    req = tmp_path / "req.pem"
    r = tools.imaguard("keys", "csr", "--key", mine / "private.pem", "--out", req, "--cn", "ext")
    assert (r.returncode, r.out.strip()) == (0, str(req)), r.explain()
    v = tools.openssl("req", "-verify", "-in", req, "-noout")
    assert v.returncode == 0, v.explain()
    assert "verify OK" in v.out + v.stderr
    text = tools.checked("openssl", "req", "-in", req, "-noout", "-text").out
    assert "X509v3 Basic Constraints: critical" in text
    assert "Digital Signature" in text
    assert "Code Signing" in text
    csr = x509.load_pem_x509_csr(req.read_bytes())
    assert csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert csr.extensions.get_extension_for_class(x509.KeyUsage).value == LEAF_USAGE
    assert list(csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CODE_SIGNING
    ]
    assert csr.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(csr.public_key())
    )
    # an outside CA (openssl here) honours the request's extensions and the chain verifies
    ca_dir = make_ca(tools, tmp_path / "ca")
    issued = tmp_path / "issued.pem"
    tools.checked(
        "openssl",
        "x509",
        "-req",
        "-in",
        req,
        "-CA",
        ca_dir / "ca.pem",
        "-CAkey",
        ca_dir / "ca-key.pem",
        "-copy_extensions",
        "copy",
        "-days",
        "30",
        "-out",
        issued,
    )
    v = tools.openssl("verify", "-CAfile", ca_dir / "ca.pem", issued)
    assert v.returncode == 0, v.explain()
    got = x509.load_pem_x509_certificate(issued.read_bytes())
    assert got.extensions.get_extension_for_class(x509.KeyUsage).value == LEAF_USAGE
    r = tools.imaguard("keys", "csr", "--key", mine / "private.pem", "--out", req)
    assert r.returncode == 2, r.explain()
    assert "refusing to overwrite" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--ca", "ca-key.pem"], "--ca CA_KEY and --ca-cert CA_CERT go together"),
        (["generate", "--ca-cert", "ca.pem"], "--ca CA_KEY and --ca-cert CA_CERT go together"),
        (["generate", "--type", "rsa2048", "--key", "k.pem"], "--type makes a new key"),
        (["ca", "--type", "rsa2048", "--key", "k.pem"], "--type makes a new key"),
    ],
)
def test_usage_errors(tools: Tools, tmp_path: Path, args: list[str], message: str) -> None:
    r = tools.imaguard("keys", *args, "--out", tmp_path / "out")
    assert r.returncode == 2, r.explain()
    assert message in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_leaf_is_refused_as_a_ca(tools: Tools, tmp_path: Path) -> None:
    leaf = tmp_path / "leaf"
    imaguard.generate_key("rsa2048").write(leaf)
    r = tools.imaguard(
        "keys",
        "generate",
        "--out",
        tmp_path / "out",
        "--ca",
        leaf / "private.pem",
        "--ca-cert",
        leaf / "cert.pem",
    )
    assert r.returncode == 2, r.explain()
    assert r.stderr.strip() == (
        f"imaguard: {leaf / 'cert.pem'}: not a CA certificate (basicConstraints CA:FALSE)"
    )
