"""Measurement: the ``measure`` verb and the ``log`` verbs (show, export, pcrs, verify)."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from typing import Any

import click

from imaguard.cli._common import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_OK,
    _Exit,
    err,
    read_file,
    write_atomic,
)
from imaguard.cli._options import (
    BANKS,
    algorithm_option,
    bank_option,
    json_option,
    keyring_option,
    resolve_store,
    store_options,
)
from imaguard.errors import Error

_log = logging.getLogger("imaguard.cli")


def _open_store(
    state: str, tpm: str | None = None, template: str = "ima-ng", algo: str = "sha256"
) -> Any:
    from imaguard.measure import LogStore

    store = LogStore(state, tpm=tpm, template=template, ima_hash=algo)
    report = store.report
    if report.torn_bytes:
        err(
            f"{state}: the log had a torn tail of {report.torn_bytes} bytes; truncated "
            f"after {report.entries} entries"
        )
    if report.re_extended:
        err(f"{state}: extended {report.re_extended} logged entries the TPM had missed")
    return store


@click.command()
@click.option(
    "--state", required=True, type=click.Path(file_okay=False), help="State directory (the log)."
)
@click.option(
    "--template", default="ima-ng", show_default=True, help="Template name or field format."
)
@algorithm_option("Digest algorithm when the file carries no value naming one (ima_hash).")
@click.option("--pcr", type=click.IntRange(0, 23), default=10, show_default=True)
@click.option("--tpm", default=None, help="TCTI of a TPM to extend (swtpm:host=127.0.0.1,port=N).")
@store_options
@click.option("-r", "--recursive", is_flag=True, help="Walk directories.")
@click.option("-L", "--follow-symlinks", is_flag=True, help="Follow symbolic links while walking.")
@click.argument("files", nargs=-1, required=True, type=click.Path())
def measure(
    state: str,
    template: str,
    algorithm: str,
    pcr: int,
    tpm: str | None,
    store: str | None,
    xattr_user: bool,
    recursive: bool,
    follow_symlinks: bool,
    files: tuple[str, ...],
) -> None:
    """Measure files into the log: one entry each (a new log starts with boot_aggregate).

    With -r, directories are walked and every regular file in them is measured, in the
    order of the walk; other file types are skipped (-v lists them).
    """
    from imaguard.appraise import SidecarStore
    from imaguard.appraise._batch import walk
    from imaguard.formats.template import TemplateDescriptor
    from imaguard.measure import file_entry

    st = resolve_store(store, xattr_user)
    try:
        desc = TemplateDescriptor.lookup(template)
    except Error as e:
        raise click.BadParameter(str(e), param_hint="--template") from None
    code = EXIT_OK
    skip = (SidecarStore.suffix,) if isinstance(st, SidecarStore) else ()
    with _open_store(state, tpm, desc.name, algorithm) as log:
        for item in walk(
            files, recursive=recursive, follow_symlinks=follow_symlinks, skip_suffixes=skip
        ):
            path = item.path
            if item.error is not None:
                err(f"{path}: {item.error}")
                code = EXIT_ERROR
                continue
            if item.skip_reason is not None:
                _log.info("skipped %s: %s", path, item.skip_reason)
                continue
            try:
                entry = file_entry(path, desc, ima_hash=algorithm, pcr=pcr, store=st)
                result = log.append(entry)
            except Error as e:
                err(str(e))
                code = EXIT_ERROR
                continue
            if result.added:
                click.echo(f"{result.index} {path}")
            else:
                click.echo(f"- {path} (already measured: {result.reason})")
    raise _Exit(code)


@click.group()
def log() -> None:
    """Show, export and verify measurement logs."""


_STATE = click.option(
    "--state", required=True, type=click.Path(file_okay=False), help="State directory (the log)."
)


def _state_entries(state: str) -> tuple[list[Any], tuple[str, ...]]:
    from imaguard.formats.measurelist import parse_binary
    from imaguard.measure import read_state

    data, banks = read_state(state)
    return [r.entry for r in parse_binary(data, "sha1")], banks


@log.command("show")
@_STATE
@click.option(
    "--format", "fmt", type=click.Choice(["ascii", "json"]), default="ascii", show_default=True
)
@bank_option()
def log_show(state: str, fmt: str, bank: str) -> None:
    """Print the log (kernel ASCII format, or JSON)."""
    from imaguard.formats.measurelist import serialize_ascii
    from imaguard.formats.template import render_field

    entries, _ = _state_entries(state)
    if fmt == "ascii":
        sys.stdout.buffer.write(serialize_ascii(entries, bank))
        sys.stdout.flush()
    else:
        out = [
            {
                "index": i,
                "pcr": e.pcr,
                "template": e.template.name,
                "digest": e.template_digest(bank).hex(),
                "violation": e.violation,
                "fields": {
                    f: render_field(f, d).decode("utf-8", "backslashreplace")
                    for f, d in zip(e.template.fields, e.fields, strict=True)
                },
            }
            for i, e in enumerate(entries)
        ]
        click.echo(json.dumps(out, indent=2))
    raise _Exit(EXIT_OK)


@log.command("export")
@_STATE
@click.option("--binary", "binary_out", default=None, type=click.Path(dir_okay=False))
@click.option("--ascii", "ascii_out", default=None, type=click.Path(dir_okay=False))
@bank_option()
def log_export(state: str, binary_out: str | None, ascii_out: str | None, bank: str) -> None:
    """Write the log as binary_runtime_measurements and/or ascii_runtime_measurements."""
    from imaguard.formats.measurelist import serialize_ascii, serialize_binary

    if binary_out is None and ascii_out is None:
        raise click.UsageError("give --binary OUT, --ascii OUT, or both")
    entries, _ = _state_entries(state)
    if binary_out is not None:
        write_atomic(binary_out, serialize_binary(entries, bank))
    if ascii_out is not None:
        write_atomic(ascii_out, serialize_ascii(entries, bank))
    raise _Exit(EXIT_OK)


# evmctl ima_measurement --pcrs ALGO,FILE reads only these banks (ima-evm-utils src/evmctl.c).
_EVMCTL_BANKS = ("sha1", "sha256")


def evmctl_pcr_file(bank: str, values: dict[int, str]) -> bytes:
    """The PCR file ``evmctl ima_measurement --pcrs BANK,FILE`` reads: the lines
    ``PCR-00: <hex>`` to ``PCR-23: <hex>`` in order (evmctl takes a line only when it is
    the next index); PCRs the log does not touch hold zeros, their power-on value."""
    zero = "00" * hashlib.new(bank).digest_size
    return "".join(f"PCR-{i:02d}: {values.get(i, zero)}\n" for i in range(24)).encode()


@log.command("pcrs")
@_STATE
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "evmctl"]),
    default=None,
    help="text (BANK:PCR HEX lines, the default), json, or evmctl: write the PCR files "
    "`evmctl ima_measurement --pcrs` reads into -o DIR and print those --pcrs arguments.",
)
@click.option(
    "-o",
    "--output-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where --format evmctl writes pcrs-sha1.txt and pcrs-sha256.txt.",
)
@json_option("Same as --format json.")
def log_pcrs(state: str, fmt: str | None, output_dir: str | None, as_json: bool) -> None:
    """The PCR values the log replays to, per bank.

    With --format evmctl -o DIR it writes DIR/pcrs-sha1.txt and DIR/pcrs-sha256.txt and
    prints the matching arguments, so that

        evmctl ima_measurement $(imaguard log pcrs --state S --format evmctl -o D) LOG

    checks an exported log (evmctl reads the sha1 and sha256 banks only).
    """
    import os

    from imaguard.measure import read_state, records_from_binary, verify_records

    if as_json:
        if fmt not in (None, "json"):
            raise click.UsageError("--json conflicts with --format " + str(fmt))
        fmt = "json"
    fmt = fmt or "text"
    if (fmt == "evmctl") != (output_dir is not None):
        raise click.UsageError("--format evmctl needs -o DIR (and -o only goes with it)")
    data, banks = read_state(state)
    records, problem = records_from_binary(data, "sha1")
    if problem is not None:
        raise Error(f"{state}: {problem.message}")
    result = verify_records(records, banks=banks)
    if fmt == "json":
        click.echo(
            json.dumps(
                {b: {str(i): v for i, v in sorted(p.items())} for b, p in result.pcrs.items()},
                indent=2,
            )
        )
    elif fmt == "evmctl":
        directory = output_dir or "."
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise Error(f"{directory}: cannot create: {e.strerror or e}") from e
        args = []
        for b in _EVMCTL_BANKS:
            if b not in result.pcrs:
                continue
            path = os.path.join(directory, f"pcrs-{b}.txt")
            write_atomic(path, evmctl_pcr_file(b, result.pcrs[b]))
            args += ["--pcrs", f"{b},{path}"]
        skipped = sorted(set(result.pcrs) - set(_EVMCTL_BANKS))
        if skipped:
            err(f"evmctl reads no {', '.join(skipped)} PCR file: not written")
        if not args:
            raise Error(f"{state}: the log has no sha1 or sha256 bank for evmctl")
        click.echo(" ".join(args))
    else:
        for b, p in result.pcrs.items():
            for i, v in sorted(p.items()):
                click.echo(f"{b}:{i} {v}")
    raise _Exit(EXIT_OK)


def _parse_pcr_specs(specs: tuple[str, ...]) -> dict[str, dict[int, bytes]]:
    out: dict[str, dict[int, bytes]] = {}
    for spec in specs:
        left, sep, hexval = spec.partition("=")
        bank, _, idx = left.partition(":")
        try:
            index = int(idx) if idx else 10
            value = bytes.fromhex(hexval)
            size = hashlib.new(bank).digest_size
        except ValueError as e:
            raise click.BadParameter(
                f"{spec!r}: use BANK=HEX or BANK:PCR=HEX ({e})", param_hint="--pcrs"
            ) from None
        if not sep or bank not in BANKS or len(value) != size:
            raise click.BadParameter(
                f"{spec!r}: use BANK=HEX (sha1/sha256/sha384/sha512, full-length hex)",
                param_hint="--pcrs",
            )
        out.setdefault(bank, {})[index] = value
    return out


_NOT_CHECKED = (
    "PCRs not checked: no --pcrs or --tpm reference was given, so the replay proves only "
    "the log's internal consistency (anyone can write a consistent log)"
)


@log.command("verify")
@click.option("--state", default=None, type=click.Path(file_okay=False))
@click.option("--binary", "binary_in", default=None, type=click.Path(dir_okay=False))
@click.option("--ascii", "ascii_in", default=None, type=click.Path(dir_okay=False))
@bank_option("Bank of a --binary file's template-digest column.")
@click.option(
    "--pcrs", "pcr_specs", multiple=True, help="BANK=HEX (PCR 10) or BANK:PCR=HEX; repeatable."
)
@click.option("--tpm", default=None, help="Read the expected PCRs from this TPM (TCTI).")
@click.option(
    "--runtime-policy",
    default=None,
    type=click.Path(dir_okay=False),
    help="Keylime runtime policy JSON.",
)
@click.option(
    "--digestlist",
    "digestlist_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A digest list the verifier trusts (with --runtime-policy): its measured entry "
    "must match it, and the files it holds count as allowed; repeatable.",
)
@keyring_option("Certificates for ima-sig signatures.")
@click.option(
    "--prefix-ok", is_flag=True, help="Accept PCRs that match a prefix of the log (as Keylime)."
)
@click.option("--ignore-violations", is_flag=True, help="Do not count ToMToU/open-writers records.")
@json_option()
def log_verify(
    state: str | None,
    binary_in: str | None,
    ascii_in: str | None,
    bank: str,
    pcr_specs: tuple[str, ...],
    tpm: str | None,
    runtime_policy: str | None,
    digestlist_files: tuple[str, ...],
    keyrings: tuple[str, ...],
    prefix_ok: bool,
    ignore_violations: bool,
    as_json: bool,
) -> None:
    """Replay a log and judge it: exit 0 valid, 1 invalid (every finding listed).

    Without --pcrs or --tpm nothing anchors the log: the output says "PCRs not checked"
    (JSON: "pcrs_checked": false) and a valid result means only that the log is
    internally consistent.
    """
    import imaguard
    from imaguard.formats.keylime import RuntimePolicy
    from imaguard.measure import (
        TpmPcrs,
        read_state,
        records_from_ascii,
        records_from_binary,
        verify_log,
        verify_records,
    )

    sources = [x for x in (state, binary_in, ascii_in) if x is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --state DIR, --binary F, --ascii F")
    banks: tuple[str, ...] = ("sha1", "sha256")
    digest_bank = bank
    fmt: Any = "ascii" if ascii_in is not None else "binary"
    if state is not None:
        data, banks = read_state(state)
        digest_bank = "sha1"
    else:
        data = read_file(binary_in or ascii_in or "")
    expected = _parse_pcr_specs(pcr_specs)
    ring = imaguard.Keyring.load(*keyrings) if keyrings else None
    lists = []
    for path in digestlist_files:
        from imaguard.errors import FormatError
        from imaguard.formats import digestlist as dlformat

        raw = read_file(path)
        try:
            lists.append((hashlib.sha256(raw).digest(), dlformat.parse(raw)))
        except FormatError as e:
            raise click.UsageError(f"{path}: not a digest list: {e}") from e
    if lists and runtime_policy is None:
        raise click.UsageError("--digestlist needs --runtime-policy (the rest of what may run)")
    policy_text = read_file(runtime_policy) if runtime_policy is not None else None
    if tpm is None:
        # The whole log at once: parsed and hashed on every core, the policy read meanwhile.
        result = verify_log(
            data,
            fmt=fmt,
            bank=digest_bank,
            banks=banks,
            expected=expected or None,
            prefix_ok=prefix_ok,
            keyring=ring,
            runtime_policy=policy_text,
            ignore_violations=ignore_violations,
            digest_lists=lists,
        )
    else:
        if fmt == "ascii":
            records, digest_bank, problem = records_from_ascii(data)
        else:
            records, problem = records_from_binary(data, digest_bank)
        backend = TpmPcrs(tpm)
        try:
            used = sorted({r.pcr for r in records}) or [10]
            wanted = [b for b in banks if b in backend.banks()] or list(backend.banks())
            for b, vals in backend.read(used, wanted).items():
                expected.setdefault(b, {}).update(vals)
        finally:
            backend.close()
        result = verify_records(
            records,
            digest_bank=digest_bank,
            banks=banks,
            expected=expected or None,
            prefix_ok=prefix_ok,
            keyring=ring,
            runtime_policy=RuntimePolicy.parse(policy_text) if policy_text is not None else None,
            ignore_violations=ignore_violations,
            parse_error=problem,
            digest_lists=lists,
        )
    checked = bool(expected)
    if as_json:
        doc = result.to_json()
        doc["pcrs_checked"] = checked
        if not checked:
            doc["notes"] = [*doc["notes"], _NOT_CHECKED]
        click.echo(json.dumps(doc, indent=2))
    else:
        for f in result.findings:
            where = f"entry {f.index}: " if f.index is not None else ""
            click.echo(f"{f.code}: {where}{f.message}")
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        verdict = "valid" if result.ok else f"INVALID ({len(result.findings)} findings)"
        if not checked:
            click.echo(_NOT_CHECKED, err=True)
            verdict += " (PCRs not checked)"
        click.echo(f"{result.entries} entries: {verdict}", err=True)
    raise _Exit(EXIT_OK if result.ok else EXIT_FAILED, fast=True)
