"""The file verbs: sign, verify, hash and show."""

from __future__ import annotations

import json
from typing import Any

import click

import imaguard
from imaguard.appraise import Cause, Require, Status, Verdict
from imaguard.cli._common import EXIT_ERROR, EXIT_OK, _Exit, err
from imaguard.cli._options import (
    algorithm_option,
    cert_option,
    json_option,
    keyring_option,
    load_keyring,
    load_signing_key,
    resolve_store,
    signing_key_options,
    store_options,
    walk_options,
)
from imaguard.cli._runner import (
    Outcome,
    Result,
    run_batch,
    run_batch_counted,
    summary,
    summary_counts,
)
from imaguard.errors import Error
from imaguard.formats import hashalgo

_VERDICT_KEYS = tuple(Verdict("", Status.UNKNOWN).to_dict())


@click.command()
@signing_key_options(help="Private key: a PEM or DER file, or a pkcs11: URI (a token key).")
@click.option(
    "--cert",
    "cert_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Certificate whose SKID gives the key id (as evmctl --keyid-from-cert).",
)
@click.option(
    "-p",
    "--pass",
    "password",
    default=None,
    help="Password of an encrypted key (prefer the IMAGUARD_KEY_PASSWORD variable).",
)
@algorithm_option()
@click.option(
    "--sigv3", is_flag=True, help="Write a v3 (0x06) signature over the fs-verity digest."
)
@store_options
@walk_options
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.pass_context
def sign(
    ctx: click.Context,
    key_path: str,
    cert_path: str | None,
    password: str | None,
    pkcs11_module: str | None,
    algorithm: str,
    store: str | None,
    xattr_user: bool,
    recursive: bool,
    follow_symlinks: bool,
    jobs: int | None,
    paths: tuple[str, ...],
    sigv3: bool = False,
) -> None:
    """Sign files: write a v2 signature (type 0x03) of their content (or v3 with --sigv3)."""
    st = resolve_store(store, xattr_user)
    key = load_signing_key(key_path, password, pkcs11_module, cert_path)
    algo = hashalgo.by_name(algorithm)
    verbose = ctx.obj["verbose"] > 0

    def op(path: str) -> Result:
        value = imaguard.sign_file(path, key, algo, st, sigv3=sigv3)
        return Result(path, Outcome.OK, value.serialize().hex() if verbose else "")

    results = run_batch(
        paths,
        op,
        recursive=recursive,
        follow=follow_symlinks,
        jobs=jobs,
        store=st,
        label="signing",
        echo_ok=(lambda r: click.echo(f"{r.path}: {r.message}")) if verbose else None,
    )
    raise _Exit(summary("signed", results, recursive))


@click.command()
@cert_option
@keyring_option()
@click.option(
    "--allow-digest",
    is_flag=True,
    help="Also accept a bare digest value (only safe when something else protects it).",
)
@store_options
@walk_options
@json_option("Print a JSON array of verdicts.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.pass_context
def verify(
    ctx: click.Context,
    certs: tuple[str, ...],
    keyrings: tuple[str, ...],
    allow_digest: bool,
    store: str | None,
    xattr_user: bool,
    recursive: bool,
    follow_symlinks: bool,
    jobs: int | None,
    as_json: bool,
    paths: tuple[str, ...],
) -> None:
    """Verify files against trusted keys; exit 1 if any file fails."""
    st = resolve_store(store, xattr_user)
    ring = load_keyring(certs, keyrings)
    require: Require = "any" if allow_digest else "signature"
    verbose = ctx.obj["verbose"] > 0

    def op(path: str) -> Result:
        verdict = imaguard.appraise(path, ring, require=require, store=st)
        if verdict.passed:
            outcome = Outcome.OK
            if not as_json and not verbose:
                return Result(path, outcome)  # nothing to say: keep the result small
        elif verdict.status is Status.UNKNOWN and verdict.cause == Cause.UNKNOWN:
            # The file could not be examined (unreadable, vanished, no xattr support).
            outcome = Outcome.ERROR
        else:
            outcome = Outcome.FAILED
        return Result(
            path, outcome, f"{path}: {verdict.describe()}", verdict.to_dict() if as_json else None
        )

    if not as_json and not verbose:
        # Passes print nothing: count them, and let the quick path find them.
        from imaguard.appraise._quick import quick_pass

        counted = run_batch_counted(
            paths,
            op,
            quick=quick_pass(ring, require=require, store=st),
            recursive=recursive,
            follow=follow_symlinks,
            jobs=jobs,
            store=st,
            label="verifying",
        )
        raise _Exit(summary_counts("verified", counted.counts, recursive), fast=True)
    echo_ok = None if as_json or not verbose else (lambda r: click.echo(r.message))
    results = run_batch(
        paths,
        op,
        recursive=recursive,
        follow=follow_symlinks,
        jobs=jobs,
        store=st,
        label="verifying",
        echo_failures=not as_json,
        echo_ok=echo_ok,
    )
    if as_json:
        out = []
        for r in results:
            if r.data is not None:
                out.append(r.data)
            else:
                blank = dict.fromkeys(_VERDICT_KEYS)
                out.append(
                    {**blank, "path": r.path, "status": r.outcome.value, "detail": r.message}
                )
        click.echo(json.dumps(out, indent=2))
    raise _Exit(summary("verified", results, recursive), fast=True)


@click.command("hash")
@algorithm_option()
@store_options
@walk_options
@click.option("-n", "--dry-run", is_flag=True, help="Print the value; store nothing.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def hash_cmd(
    algorithm: str,
    store: str | None,
    xattr_user: bool,
    recursive: bool,
    follow_symlinks: bool,
    jobs: int | None,
    dry_run: bool,
    paths: tuple[str, ...],
) -> None:
    """Store the digest value (0x04; 0x01 for md5/sha1, as the kernel) and print it."""
    st = resolve_store(store, xattr_user)
    algo = hashalgo.by_name(algorithm)

    def op(path: str) -> Result:
        if dry_run:
            from imaguard.formats.xattr import digest_value

            value = digest_value(algo, imaguard.hash_file(path, algo).value)
        else:
            value = imaguard.store_digest(path, algo, st)
        return Result(path, Outcome.OK, value.serialize().hex())

    results = run_batch(
        paths,
        op,
        recursive=recursive,
        follow=follow_symlinks,
        jobs=jobs,
        store=st,
        label="hashing",
        echo_ok=lambda r: click.echo(f"{r.message}  {r.path}"),
    )
    raise _Exit(summary("hashed", results, recursive), fast=True)


def _describe(path: str, info: Any, store_name: str) -> str:
    """One line: the answer (signed? by which key?) first, then the decoded fields."""
    if not info.present:
        return f"{path}: not signed (no value in {store_name})"
    if info.error:
        return f"{path}: malformed value ({info.value_size} bytes): {info.error}"
    if info.signed:
        line = (
            f"{path}: signed, key id {info.key_id:08x}, {info.algorithm}, {info.type_name} "
            f"(type=0x{info.value_type:02x}, sig={info.signature_size} bytes, "
            f"value={info.value_size} bytes)"
        )
        if info.keyring_checked:
            s = info.signer
            line += (
                f"\n  signer: {s.subject} (key id {s.key_id:08x}, valid {s.not_before} to "
                f"{s.not_after}; named, not verified)"
                if s is not None
                else f"\n  signer: no certificate in the keyring has key id {info.key_id:08x}"
            )
        return line
    digest = info.digest.hex() if info.digest else ""
    return (
        f"{path}: not signed: a {info.algorithm} {info.type_name} value "
        f"(type=0x{info.value_type:02x}) {digest}"
    ).rstrip()


@click.command()
@store_options
@keyring_option("Name the signer from these certificates (subject, key id, validity); repeatable.")
@json_option("Print a JSON array.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def show(
    store: str | None,
    xattr_user: bool,
    keyrings: tuple[str, ...],
    as_json: bool,
    paths: tuple[str, ...],
) -> None:
    """Decode what is stored for each file (type, algorithm, key id, sizes); no verification.

    Nothing is hashed: this says what a file carries, not whether it is right (that is
    ``verify``). With ``--keyring`` the signer is named from the certificate whose key id
    the signature carries. ``info`` is another spelling of this command.
    """
    st = resolve_store(store, xattr_user)
    ring = imaguard.Keyring.load(*keyrings) if keyrings else None
    infos: list[dict[str, Any]] = []
    code = EXIT_OK
    for path in paths:
        try:
            info = imaguard.signature_info(path, store=st, keyring=ring)
        except Error as e:
            err(str(e))
            infos.append({"path": path, "present": False, "error": str(e)})
            code = EXIT_ERROR
            continue
        infos.append(info.to_dict())
        if not as_json:
            click.echo(_describe(path, info, st.name))
    if as_json:
        click.echo(json.dumps(infos, indent=2))
    raise _Exit(code)
