"""The ``keys`` verbs: signing keys and their certificates (self-signed, from a local CA, or
requested from an outside CA), for files and PKCS#11 tokens alike."""

from __future__ import annotations

import click

import imaguard
from imaguard.cli._common import write_atomic
from imaguard.cli._options import load_signing_key
from imaguard.crypto import KEY_TYPES

_PKCS11_MODULE = click.option(
    "--pkcs11-module",
    default=None,
    metavar="PATH",
    help="PKCS#11 module for pkcs11: keys [default: $IMAGUARD_PKCS11_MODULE, else p11-kit's "
    "proxy].",
)
_DAYS = click.option("--days", type=click.IntRange(min=1), default=3650, show_default=True)
_FORCE = click.option("--force", is_flag=True, help="Overwrite existing files.")
_OUT_DIR = click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write to.",
)


@click.group()
def keys() -> None:
    """Manage signing keys."""


def _key_type(key_type: str | None, key_path: str | None) -> str:
    if key_path is not None and key_type is not None:
        raise click.UsageError("--type makes a new key; --key certifies an existing one: give one")
    return key_type or "rsa2048"


@keys.command("generate")
@click.option(
    "--type", "key_type", type=click.Choice(KEY_TYPES), default=None, help="[default: rsa2048]"
)
@_OUT_DIR
@click.option(
    "--cn", default="imaguard signing key", show_default=True, help="Certificate common name."
)
@_DAYS
@_FORCE
@click.option(
    "-k",
    "--key",
    "key_path",
    default=None,
    metavar="KEY",
    help="Certify this existing key (a file or a pkcs11: URI) instead of making one; only "
    "cert.pem and cert.der are written.",
)
@click.option(
    "--ca",
    "ca_key",
    default=None,
    metavar="CA_KEY",
    help="Issue the certificate from this CA key (a file or a pkcs11: URI) instead of "
    "self-signing it.",
)
@click.option(
    "--ca-cert",
    default=None,
    type=click.Path(dir_okay=False),
    help="The CA's certificate (PEM or DER), with --ca.",
)
@_PKCS11_MODULE
def keys_generate(
    key_type: str | None,
    out_dir: str,
    cn: str,
    days: int,
    force: bool,
    key_path: str | None,
    ca_key: str | None,
    ca_cert: str | None,
    pkcs11_module: str | None,
) -> None:
    """Write DIR/private.pem, DIR/cert.pem and DIR/cert.der (with an SKID).

    The certificate is self-signed, or with --ca/--ca-cert issued by a CA (as the kernel's
    .ima keyring requires): CA:FALSE, digitalSignature, the code-signing EKU, a Subject and
    an Authority Key Identifier. With --key no key is made: the certificate is for KEY.
    """
    from imaguard.crypto import (
        GeneratedKey,
        issue_certificate,
        load_certificates,
        self_signed_certificate,
        write_certificate,
    )

    if (ca_key is None) != (ca_cert is None):
        raise click.UsageError("--ca CA_KEY and --ca-cert CA_CERT go together")
    kind = _key_type(key_type, key_path)
    ca = None
    if ca_key is not None and ca_cert is not None:
        ca = (load_signing_key(ca_key, None, pkcs11_module), load_certificates(ca_cert)[0])
    if key_path is not None:
        existing = load_signing_key(key_path, None, pkcs11_module)
        if ca is not None:
            cert = issue_certificate(existing, ca[0], ca[1], common_name=cn, days=days)
        else:
            cert = self_signed_certificate(existing, common_name=cn, days=days)
        written = write_certificate(cert, out_dir, overwrite=force)
    else:
        generated = imaguard.generate_key(kind, common_name=cn, days=days)
        if ca is not None:
            cert = issue_certificate(generated.private_key, ca[0], ca[1], common_name=cn, days=days)
            generated = GeneratedKey(generated.private_key.with_certificate(cert), cert)
        cert = generated.certificate
        written = generated.write(out_dir, overwrite=force)
    for path in written:
        click.echo(str(path))
    if ca is not None:
        click.echo(f"issued by: {ca[1].x509.subject.rfc4514_string()}", err=True)
    click.echo(f"key id: {cert.key_id:08x}", err=True)


@keys.command("ca")
@_OUT_DIR
@click.option(
    "--type", "key_type", type=click.Choice(KEY_TYPES), default=None, help="[default: rsa2048]"
)
@click.option(
    "-k",
    "--key",
    "key_path",
    default=None,
    metavar="KEY",
    help="Make the CA certificate for this existing key (a file or a pkcs11: URI); "
    "ca-key.pem is then not written.",
)
@click.option("--cn", default="imaguard local CA", show_default=True, help="CA common name.")
@_DAYS
@_FORCE
@_PKCS11_MODULE
def keys_ca(
    out_dir: str,
    key_type: str | None,
    key_path: str | None,
    cn: str,
    days: int,
    force: bool,
    pkcs11_module: str | None,
) -> None:
    """Make a local CA: DIR/ca-key.pem (mode 0600), DIR/ca.pem and DIR/ca.der.

    The certificate is self-signed with CA:TRUE (path length 0), keyCertSign and cRLSign
    (no digitalSignature) and a Subject Key Identifier: the CA the kernel's builtin or
    secondary keyring holds so that it accepts the certificates it issues into .ima.
    """
    from imaguard.crypto import create_ca

    kind = _key_type(key_type, key_path)
    key = load_signing_key(key_path, None, pkcs11_module) if key_path is not None else kind
    ca = create_ca(key, common_name=cn, days=days)
    for path in ca.write(out_dir, overwrite=force):
        click.echo(str(path))
    click.echo(f"CA key id: {ca.certificate.key_id:08x}", err=True)


@keys.command("csr")
@click.option(
    "-k",
    "--key",
    "key_path",
    required=True,
    metavar="KEY",
    help="The key to certify: a PEM or DER file, or a pkcs11: URI.",
)
@click.option(
    "--out",
    "out_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="File to write the PEM request to.",
)
@click.option(
    "--cn", default="imaguard signing key", show_default=True, help="Subject common name."
)
@_FORCE
@_PKCS11_MODULE
def keys_csr(key_path: str, out_file: str, cn: str, force: bool, pkcs11_module: str | None) -> None:
    """Write a certificate signing request (PEM) for an outside CA.

    It requests CA:FALSE, digitalSignature, the code-signing EKU and a Subject Key
    Identifier, and is signed by KEY (proof that the requester holds it).
    """
    import os

    from imaguard.crypto import create_csr
    from imaguard.errors import UsageError

    if os.path.exists(out_file) and not force:
        raise UsageError(f"refusing to overwrite {out_file}")
    key = load_signing_key(key_path, None, pkcs11_module)
    write_atomic(out_file, create_csr(key, common_name=cn))
    click.echo(out_file)
