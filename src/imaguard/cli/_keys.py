"""The ``keys`` verbs."""

from __future__ import annotations

import click

import imaguard
from imaguard.crypto import KEY_TYPES


@click.group()
def keys() -> None:
    """Manage signing keys."""


@keys.command("generate")
@click.option(
    "--type",
    "key_type",
    type=click.Choice(KEY_TYPES),
    default="rsa2048",
    show_default=True,
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write to.",
)
@click.option(
    "--cn", default="imaguard signing key", show_default=True, help="Certificate common name."
)
@click.option("--days", type=click.IntRange(min=1), default=3650, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def keys_generate(key_type: str, out_dir: str, cn: str, days: int, force: bool) -> None:
    """Write DIR/private.pem, DIR/cert.pem and DIR/cert.der (self-signed, with an SKID)."""
    generated = imaguard.generate_key(key_type, common_name=cn, days=days)
    written = generated.write(out_dir, overwrite=force)
    for path in written:
        click.echo(str(path))
    click.echo(f"key id: {generated.certificate.key_id:08x}", err=True)
