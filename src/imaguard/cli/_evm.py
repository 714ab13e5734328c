"""The ``evm`` verbs: security.evm HMACs and signatures."""

from __future__ import annotations

import json

import click

import imaguard
from imaguard.cli._common import EXIT_ERROR, EXIT_FAILED, EXIT_OK, _Exit, err, read_file
from imaguard.cli._options import (
    algorithm_option,
    cert_option,
    json_option,
    keyring_option,
    load_signing_key,
    signing_key_options,
)
from imaguard.errors import Error


@click.group()
def evm() -> None:
    """EVM: security.evm HMACs and signatures over a file's security metadata."""


def _evm_attrs(xattr_user: bool) -> dict[str, str]:
    if xattr_user:
        return {"evm_attr": "user.evm", "ima_attr": "user.ima"}
    return {"evm_attr": "security.evm", "ima_attr": "security.ima"}


def _read_key_file(path: str) -> bytes:
    data = read_file(path)
    return data.strip() if data.strip() else data


_XATTR_USER = click.option("--xattr-user", is_flag=True, help="Use user.evm / user.ima.")
_UUID = click.option(
    "--uuid", "fs_uuid", default=None, help="Filesystem UUID (non-portable values)."
)


@evm.command("sign")
@signing_key_options(
    required=False, help="Private key (a file or a pkcs11: URI): write a signature."
)
@click.option(
    "--hmac-key",
    default=None,
    type=click.Path(dir_okay=False),
    help="File holding the HMAC key: write an HMAC (0x02).",
)
@click.option(
    "--portable/--no-portable",
    default=True,
    show_default=True,
    help="Portable signature (0x05: no inode number, generation or fs UUID).",
)
@_UUID
@algorithm_option()
@click.option("-p", "--pass", "password", default=None)
@_XATTR_USER
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def evm_sign(
    key_path: str | None,
    pkcs11_module: str | None,
    hmac_key: str | None,
    portable: bool,
    fs_uuid: str | None,
    algorithm: str,
    password: str | None,
    xattr_user: bool,
    paths: tuple[str, ...],
) -> None:
    """Write security.evm for each file."""
    from imaguard.appraise._evm import parse_uuid, sign_file_evm

    if (key_path is None) == (hmac_key is None):
        raise click.UsageError("give --key KEY (signature) or --hmac-key FILE (HMAC)")
    key = load_signing_key(key_path, password, pkcs11_module) if key_path else None
    secret = _read_key_file(hmac_key) if hmac_key else None
    code = EXIT_OK
    for path in paths:
        try:
            value = sign_file_evm(
                path,
                key=key,
                hmac_key=secret,
                portable=portable,
                fs_uuid=parse_uuid(fs_uuid),
                algorithm=algorithm,
                **_evm_attrs(xattr_user),
            )
            click.echo(f"{path}: {value.hex()}")
        except Error as e:
            err(str(e))
            code = EXIT_ERROR
    raise _Exit(code)


@evm.command("verify")
@cert_option
@keyring_option()
@click.option("--hmac-key", default=None, type=click.Path(dir_okay=False))
@_UUID
@_XATTR_USER
@json_option()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def evm_verify_cmd(
    certs: tuple[str, ...],
    keyrings: tuple[str, ...],
    hmac_key: str | None,
    fs_uuid: str | None,
    xattr_user: bool,
    as_json: bool,
    paths: tuple[str, ...],
) -> None:
    """Verify security.evm for each file: exit 0 all pass, 1 any fails."""
    from imaguard.appraise._evm import evm_verify, parse_uuid
    from imaguard.appraise._files import open_target

    ring = imaguard.Keyring.load(*certs, *keyrings) if certs or keyrings else None
    secret = _read_key_file(hmac_key) if hmac_key else None
    attrs = _evm_attrs(xattr_user)
    out = []
    code = EXIT_OK
    for path in paths:
        try:
            with open_target(path) as ref:
                r = evm_verify(
                    ref, keyring=ring, hmac_key=secret, fs_uuid=parse_uuid(fs_uuid), **attrs
                )
        except Error as e:
            err(str(e))
            code = EXIT_ERROR
            continue
        out.append({"path": path, **r.to_dict()})
        if not r.passed and code == EXIT_OK:
            code = EXIT_FAILED
        if not as_json:
            click.echo(
                f"{path}: {r.status}"
                + (f" ({r.cause})" if r.cause else "")
                + (f" - {r.detail}" if r.detail else "")
            )
    if as_json:
        click.echo(json.dumps(out, indent=2))
    raise _Exit(code)
