"""The ``digestlist`` verbs (make, sign, verify, show; add, remove, list through the daemon)
and ``trust lookup``.

Exit codes: ``verify`` 0 when every list is valid, 1 when a signature is missing or does
not verify, 2 when a list is malformed or unreadable; ``trust lookup`` 0 when some list
vouches for the digest, 1 when none does; every other error 2. ``add``, ``remove``,
``list`` and ``trust lookup`` without ``--list`` talk to the daemon (``imaguard.Client``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from imaguard.cli._common import EXIT_ERROR, EXIT_FAILED, EXIT_OK, _Exit, err, write_atomic
from imaguard.cli._options import (
    algorithm_option,
    cert_option,
    json_option,
    keyring_option,
    load_keyring,
    load_signing_key,
    signing_key_options,
)
from imaguard.errors import FileError, FormatError, UsageError, VerificationError

if TYPE_CHECKING:
    from imaguard.formats.digestlist import DigestList
    from imaguard.service import Client

__all__ = ["digestlist", "trust"]

F = TypeVar("F", bound=Callable[..., Any])

SHOWN = 10
"""Entries ``show`` prints without ``--all``."""


def _socket_option(f: F) -> F:
    return click.option(
        "--socket",
        "socket_path",
        default=None,
        help="The daemon's control socket (default $IMAGUARD_SOCKET, else "
        "/run/imaguard/control.sock).",
    )(f)


def _client(socket_path: str | None) -> Client:
    from imaguard.service import Client

    return Client(socket_path)


def _display(path: str | None) -> str | None:
    """A path as text: bytes that are not UTF-8 shown as ``\\xNN``."""
    if path is None:
        return None
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _stamp(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _info_line(info: dict[str, Any]) -> str:
    signer = info.get("signer") or "?"
    return (
        f"{info.get('name')}  id={info.get('id')}  {info.get('count')} "
        f"{info.get('algorithm')} digests  source={info.get('source')!r}  "
        f"signer={signer} (key id {info.get('key_id')})"
    )


@click.group()
def digestlist() -> None:
    """Make, sign, verify and show digest lists; load them into the daemon's trust database."""


# -- make ---------------------------------------------------------------------------------
@digestlist.command("make")
@click.option(
    "--tree", type=click.Path(), default=None, help="Every regular file under DIR (no symlinks)."
)
@click.option(
    "--dpkg",
    is_flag=True,
    help="The installed files of the PKG arguments (every installed package when none is "
    "given), hashed from disk.",
)
@click.option(
    "--deb",
    "debs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="The files inside a .deb, not installed; repeatable (more .deb files may follow "
    "as arguments).",
)
@click.option(
    "--runtime-policy",
    type=click.Path(dir_okay=False),
    default=None,
    help="The digests of a Keylime runtime policy (JSON).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default="/",
    show_default=True,
    help="With --dpkg: the root of the system whose packages are listed.",
)
@algorithm_option("Digest algorithm of the list.")
@click.option("--no-paths", is_flag=True, help="Leave the paths out (digests only).")
@click.option("--source", default=None, help="The list's source field (default: what it is of).")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The list file to write (replaced atomically).",
)
@click.argument("args", nargs=-1, metavar="[PKG|FILE.deb]...")
def make(
    tree: str | None,
    dpkg: bool,
    debs: tuple[str, ...],
    runtime_policy: str | None,
    root: str,
    algorithm: str,
    no_paths: bool,
    source: str | None,
    output: str,
    args: tuple[str, ...],
) -> None:
    """Make an unsigned digest list of a directory, packages, .deb files or a runtime policy.

    Exactly one of --tree, --dpkg, --deb and --runtime-policy. File contents are hashed
    here: no digest a package manager recorded is trusted. Unreadable files are skipped
    with a warning; the summary counts them.
    """
    import dataclasses

    from imaguard import digestlists
    from imaguard.formats import digestlist as dlformat

    chosen = [
        n
        for n, given in (
            ("--tree", tree is not None),
            ("--dpkg", dpkg),
            ("--deb", bool(debs)),
            ("--runtime-policy", runtime_policy is not None),
        )
        if given
    ]
    if len(chosen) != 1:
        raise click.UsageError(
            "give exactly one of --tree DIR, --dpkg [PKG...], --deb FILE.deb, "
            "--runtime-policy FILE" + (f" (not {' and '.join(chosen)})" if chosen else "")
        )
    if source is not None and len(source.encode()) > dlformat.MAX_SOURCE:
        raise click.BadParameter(
            f"source is longer than {dlformat.MAX_SOURCE} bytes", param_hint="--source"
        )
    if root != "/" and not dpkg:
        raise click.UsageError("--root goes with --dpkg")
    if args and not (dpkg or debs):
        raise click.UsageError(f"unexpected arguments {' '.join(args)!r} (only with --dpkg/--deb)")
    report = digestlists.MakeReport()
    with_paths = not no_paths
    dl: DigestList
    if tree is not None:
        dl = digestlists.make_from_tree(
            tree, algorithm=algorithm, with_paths=with_paths, report=report
        )
    elif dpkg:
        dl = digestlists.make_from_dpkg(
            list(args) or None,
            algorithm=algorithm,
            root=root,
            with_paths=with_paths,
            report=report,
        )
    elif debs:
        dl = digestlists.make_from_deb(
            [*debs, *args], algorithm=algorithm, with_paths=with_paths, report=report
        )
    else:
        dl = digestlists.make_from_runtime_policy(
            str(runtime_policy), algorithm=algorithm, with_paths=with_paths, report=report
        )
    if source is not None:
        dl = dataclasses.replace(dl, source=source)
    write_atomic(output, dlformat.serialize(dl))
    stale = output + ".sig"
    if os.path.exists(stale):
        try:
            os.unlink(stale)
            err(f"{stale}: removed (it signed the list that was there before)")
        except OSError as e:
            err(f"{stale}: left over from the previous list, cannot remove: {e.strerror or e}")
    click.echo(
        f"{output}: {len(dl)} {dl.algorithm.name} digests from {dl.source!r} ({report.summary()})"
    )


# -- sign -----------------------------------------------------------------------------------
@digestlist.command()
@signing_key_options(help="Private key: a PEM or DER file, or a pkcs11: URI (a token key).")
@click.option(
    "-p",
    "--pass",
    "password",
    default=None,
    help="Password of an encrypted key (prefer the IMAGUARD_KEY_PASSWORD variable).",
)
@algorithm_option("Digest algorithm of the signature.")
@click.option(
    "--detached", is_flag=True, help="Write the signature to LIST.sig; LIST stays as it is."
)
@click.argument("lists", nargs=-1, required=True, type=click.Path(dir_okay=False))
def sign(
    key_path: str,
    pkcs11_module: str | None,
    password: str | None,
    algorithm: str,
    detached: bool,
    lists: tuple[str, ...],
) -> None:
    """Sign digest lists: append a signature to each (or write LIST.sig with --detached).

    A list that is already signed is signed afresh (its old appended signature is
    replaced). The list is rewritten atomically: readers see the old file or the new one.
    """
    from imaguard import digestlists
    from imaguard.formats import digestlist as dlformat

    key = load_signing_key(key_path, password, pkcs11_module)
    for path in lists:
        data, _ = digestlists.read_list(path)
        if detached and data.endswith(dlformat.SIGNATURE_MAGIC):
            raise UsageError(
                f"{path}: the list carries an appended signature (which would take "
                "precedence); sign it without --detached to replace it"
            )
        try:
            signed = digestlists.sign_list(data, key, detached=detached, algorithm=algorithm)
        except FormatError as e:
            raise FormatError(f"{path}: not a well-formed digest list: {e}") from e
        if detached:
            write_atomic(path + ".sig", signed)
            click.echo(f"{path}.sig: detached signature written (key id {key.key_id:08x})")
        else:
            write_atomic(path, signed)
            click.echo(f"{path}: signed (key id {key.key_id:08x})")


# -- verify ---------------------------------------------------------------------------------
@digestlist.command()
@keyring_option()
@cert_option
@click.argument("lists", nargs=-1, required=True, type=click.Path(dir_okay=False))
def verify(keyrings: tuple[str, ...], certs: tuple[str, ...], lists: tuple[str, ...]) -> None:
    """Verify digest lists' signatures; exit 1 if one is invalid, 2 if one is malformed.

    The signature is the appended one, else LIST.sig.
    """
    from imaguard import digestlists

    ring = load_keyring(certs, keyrings)
    code = EXIT_OK
    for path in lists:
        try:
            data, sig = digestlists.read_list(path)
            dl, verdict = digestlists.verify_list(data, ring, signature=sig, name=path)
        except VerificationError as e:
            click.echo(f"INVALID {e}")
            code = max(code, EXIT_FAILED)
            continue
        except FileError as e:
            err(str(e))
            code = EXIT_ERROR
            continue
        except FormatError as e:
            err(f"{path}: malformed digest list: {e}")
            code = EXIT_ERROR
            continue
        signer = verdict.signer or "?"
        click.echo(
            f"{path}: valid: {len(dl)} {dl.algorithm.name} digests from {dl.source!r}, "
            f"signed by {signer} (key id {verdict.key_id_hex}, "
            f"{'detached' if sig is not None else 'appended'})"
        )
    raise _Exit(code)


# -- show -----------------------------------------------------------------------------------
def _signature_doc(value: bytes | None, kind: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    from imaguard.formats import SignatureValue, parse

    try:
        parsed = parse(value)
    except FormatError as e:
        return {"kind": kind, "malformed": str(e)}
    if not isinstance(parsed, SignatureValue):
        return {"kind": kind, "malformed": "not a signature value"}
    return {
        "kind": kind,
        "key_id": parsed.key_id_hex,
        "algorithm": parsed.algorithm.name,
        "type": f"0x{int(parsed.type):02x}",
    }


@digestlist.command()
@json_option()
@click.option("--all", "show_all", is_flag=True, help=f"Every entry (default: the first {SHOWN}).")
@click.argument("list_path", metavar="LIST", type=click.Path(dir_okay=False))
def show(as_json: bool, show_all: bool, list_path: str) -> None:
    """Print a digest list's header, signer key id and entries; no verification."""
    from imaguard import digestlists
    from imaguard.formats import digestlist as dlformat

    data, detached = digestlists.read_list(list_path)
    try:
        body, appended = dlformat.split_signature(data)
        dl = dlformat.parse(body)
    except FormatError as e:
        raise FormatError(f"{list_path}: malformed digest list: {e}") from e
    value = appended if appended is not None else detached
    kind = "appended" if appended is not None else "detached" if detached is not None else None
    sig = _signature_doc(value, kind)
    limit = len(dl) if show_all else min(SHOWN, len(dl))
    entries = [
        {"digest": dl.digests[i].hex(), "path": _display(dl.paths[i] if dl.paths else None)}
        for i in range(limit)
    ]
    doc: dict[str, Any] = {
        "list": list_path,
        "version": dlformat.VERSION,
        "algorithm": dl.algorithm.name,
        "paths": dl.paths is not None,
        "count": len(dl),
        "created": dl.created,
        "source": dl.source,
        "size": len(body),
        "signature": sig,
        "entries": entries,
        "more": len(dl) - limit,
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    if sig is None:
        sig_text = "none (unsigned)"
    elif "malformed" in sig:
        sig_text = f"{kind}, malformed: {sig['malformed']}"
    else:
        sig_text = f"{kind}, key id {sig['key_id']} ({sig['algorithm']}); not verified"
    lines = [
        f"{list_path}:",
        f"  format:    version {dlformat.VERSION}, {dl.algorithm.name}, "
        f"{'with paths' if dl.paths is not None else 'digests only'}",
        f"  source:    {dl.source}",
        f"  created:   {_stamp(dl.created)} ({dl.created})",
        f"  digests:   {len(dl)}",
        f"  signature: {sig_text}",
    ]
    for entry in entries:
        lines.append(f"  {entry['digest']}  {entry['path'] or ''}".rstrip())
    if doc["more"]:
        lines.append(f"  ... {doc['more']} more (--all)")
    click.echo("\n".join(lines))


# -- the daemon's trust database ----------------------------------------------------------
@digestlist.command()
@_socket_option
@click.option(
    "--name",
    default=None,
    help="Load it under NAME (one LIST only; default: deb:PACKAGE for a package's list, "
    "else its source).",
)
@json_option("Print the daemon's answers as JSON.")
@click.argument("lists", nargs=-1, required=True, type=click.Path(dir_okay=False))
def add(socket_path: str | None, name: str | None, as_json: bool, lists: tuple[str, ...]) -> None:
    """Load signed digest lists into the daemon's trust database (it verifies them).

    The signature is the appended one, else LIST.sig. Exit 2 if any list is refused.
    """
    from imaguard import digestlists
    from imaguard.errors import ServiceError
    from imaguard.formats import digestlist as dlformat

    if name is not None and len(lists) > 1:
        raise click.UsageError("--name names one list: give one LIST")
    code = EXIT_OK
    answers: list[dict[str, Any]] = []
    with _client(socket_path) as client:
        for path in lists:
            try:
                data, sig = digestlists.read_list(path)
                body, _ = dlformat.split_signature(data)
                dl = dlformat.parse(body)
            except FileError as e:
                err(str(e))
                code = EXIT_ERROR
                continue
            except FormatError as e:
                err(f"{path}: malformed digest list: {e}")
                code = EXIT_ERROR
                continue
            label = name or digestlists.list_name(dl, os.path.basename(path))
            try:
                # the list goes as its open descriptor (SCM_RIGHTS): no frame size limit
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    info = client.request(
                        "digestlist_add",
                        fd,
                        name=label,
                        signature=base64.b64encode(sig).decode() if sig is not None else None,
                    )
                finally:
                    os.close(fd)
            except ServiceError as e:
                err(f"{path}: refused: {e}")
                code = EXIT_ERROR
                continue
            except UsageError as e:  # the request does not fit in one protocol frame
                err(
                    f"{path}: not sent: {e}; the list is {len(data)} bytes (base64 in a 1 MiB "
                    "frame): split it, or make it with --no-paths"
                )
                code = EXIT_ERROR
                continue
            answers.append(info)
            if not as_json:
                click.echo(f"added {_info_line(info)}")
    if as_json:
        click.echo(json.dumps(answers, indent=2, sort_keys=True))
    raise _Exit(code)


@digestlist.command()
@_socket_option
@json_option("Print the daemon's answers as JSON.")
@click.argument("which", nargs=-1, required=True, metavar="NAME_OR_ID...")
def remove(socket_path: str | None, as_json: bool, which: tuple[str, ...]) -> None:
    """Remove digest lists (by name, id or id prefix) from the daemon's trust database."""
    from imaguard.errors import ServiceError

    code = EXIT_OK
    answers: list[dict[str, Any]] = []
    with _client(socket_path) as client:
        for w in which:
            try:
                result = client.request("digestlist_remove", which=w)
            except ServiceError as e:
                err(f"{w}: {e}")
                code = EXIT_ERROR
                continue
            info = result.get("removed") or {}
            answers.append(info)
            if not as_json:
                click.echo(f"removed {info.get('name')}  id={info.get('id')}")
    if as_json:
        click.echo(json.dumps(answers, indent=2, sort_keys=True))
    raise _Exit(code)


@digestlist.command("list")
@_socket_option
@json_option("Print the daemon's answer as JSON.")
def list_cmd(socket_path: str | None, as_json: bool) -> None:
    """The digest lists loaded in the daemon's trust database."""
    with _client(socket_path) as client:
        result = client.request("digestlists")
    items = list(result.get("lists") or [])
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for info in items:
        click.echo(f"{_info_line(info)}  added={_stamp(info.get('added'))}")
    if not items:
        click.echo("(no digest lists loaded)")


# -- trust lookup ---------------------------------------------------------------------------
@click.group()
def trust() -> None:
    """Ask which digest lists vouch for a file's content or a digest."""


def _offline_lookup(
    digest: bytes, algorithm: str, list_paths: tuple[str, ...], ring: Any
) -> list[dict[str, Any]]:
    """The verified lists (files) that hold ``digest``; a list that does not verify is an error."""
    import bisect

    from imaguard import digestlists
    from imaguard.formats import digestlist as dlformat

    found: list[dict[str, Any]] = []
    for path in list_paths:
        data, sig = digestlists.read_list(path)
        try:
            dl, verdict = digestlists.verify_list(data, ring, signature=sig, name=path)
        except FormatError as e:
            raise FormatError(f"{path}: malformed digest list: {e}") from e
        if dl.algorithm.name != algorithm or digest not in dl:
            continue
        i = bisect.bisect_left(dl.digests, digest)
        stored = data  # the id is the SHA-256 of the list as the daemon keeps it
        if sig is not None:
            stored = dlformat.append_signature(dlformat.split_signature(data)[0], sig)
        found.append(
            {
                "id": hashlib.sha256(stored).hexdigest()[:32],
                "name": path,
                "source": dl.source,
                "algorithm": dl.algorithm.name,
                "count": len(dl),
                "signer": verdict.signer,
                "key_id": verdict.key_id_hex,
                "path": _display(dl.paths[i]) if dl.paths is not None else None,
            }
        )
    return found


@trust.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--digest", "digest_hex", default=None, help="Look up this digest (hex).")
@algorithm_option("Digest algorithm (PATH is hashed with it).")
@click.option(
    "--list",
    "list_paths",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Look in this signed list (verified with --keyring) instead of asking the daemon; "
    "repeatable.",
)
@keyring_option("Trusted certificates for --list: a directory or file; repeatable.")
@cert_option
@_socket_option
@json_option()
def lookup(
    path: str | None,
    digest_hex: str | None,
    algorithm: str,
    list_paths: tuple[str, ...],
    keyrings: tuple[str, ...],
    certs: tuple[str, ...],
    socket_path: str | None,
    as_json: bool,
) -> None:
    """Which digest lists vouch for PATH's content (or --digest HEX); exit 0 vouched, 1 not.

    Without --list the daemon's trust database is asked; with --list the lists given are
    verified against --keyring and searched here, offline.
    """
    import imaguard
    from imaguard.formats.hashalgo import by_name

    algo = by_name(algorithm)
    if (path is None) == (digest_hex is None):
        raise click.UsageError("give PATH or --digest HEX (one of them)")
    if digest_hex is not None:
        try:
            digest = bytes.fromhex(digest_hex.strip())
        except ValueError:
            raise click.BadParameter("not hexadecimal", param_hint="--digest") from None
        if len(digest) != algo.digest_size:
            raise click.BadParameter(
                f"{len(digest)} bytes; a {algo.name} digest is {algo.digest_size}",
                param_hint="--digest",
            )
    else:
        digest = imaguard.hash_file(str(path), algo).value
    if list_paths:
        ring = load_keyring(certs, keyrings)
        found = _offline_lookup(digest, algo.name, list_paths, ring)
    elif keyrings or certs:
        raise click.UsageError("--keyring/--cert verify the lists given with --list")
    else:
        with _client(socket_path) as client:
            result = client.request("trust_lookup", digest=digest.hex(), algorithm=algo.name)
        found = list(result.get("lists") or [])
    what = path if path is not None else f"{algo.name}:{digest.hex()}"
    if as_json:
        doc = {
            "path": path,
            "digest": digest.hex(),
            "algorithm": algo.name,
            "vouched": bool(found),
            "lists": found,
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    elif found:
        for info in found:
            where = f" as {info['path']}" if info.get("path") else ""
            click.echo(f"{what}: vouched for by {_info_line(info)}{where}")
    else:
        click.echo(f"{what}: not vouched for by any digest list ({algo.name} {digest.hex()})")
    raise _Exit(EXIT_OK if found else EXIT_FAILED)
