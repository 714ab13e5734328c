"""Generating Keylime runtime policies from a measurement log or a directory tree."""

from __future__ import annotations

import os
from collections.abc import Iterable

from imaguard.appraise._batch import walk
from imaguard.appraise._calls import hash_file
from imaguard.errors import Error, FormatError
from imaguard.formats.keylime import RuntimePolicy
from imaguard.formats.measurelist import RawRecord
from imaguard.formats.template import TemplateDescriptor, decode_digest_field
from imaguard.measure._verify import _as_key, _decode

__all__ = ["policy_from_records", "policy_from_tree"]


def _add(table: dict[str, list[str]], key: str, digest: str) -> None:
    values = table.setdefault(key, [])
    if digest not in values:
        values.append(digest)


def policy_from_records(
    records: Iterable[RawRecord], *, log_hash_alg: str = "sha1", excludes: Iterable[str] = ()
) -> RuntimePolicy:
    """Allow every digest the log holds (boot_aggregate included); keys and buffers too."""
    digests: dict[str, list[str]] = {}
    keyrings: dict[str, list[str]] = {}
    ima_buf: dict[str, list[str]] = {}
    descs: dict[str, TemplateDescriptor] = {}
    for rec in records:
        if not any(rec.digest):
            continue  # violations carry no digest to allow
        fields = _decode(rec, descs)
        name = (fields.get("n-ng") or fields.get("n") or b"").rstrip(b"\0")
        path = name.decode("utf-8", "surrogateescape")
        if "d-ng" in fields or "d-ngv2" in fields:
            fid = "d-ng" if "d-ng" in fields else "d-ngv2"
            _, _, digest = decode_digest_field(fields[fid], fid)
        elif "d" in fields:
            digest = fields["d"]
        else:
            raise FormatError(f"record {rec.index}: template {rec.template_name} has no digest")
        hexd = digest.hex()
        if rec.template_name == "ima-buf":
            if _as_key(fields.get("buf", b"")) is not None:
                _add(keyrings, path, hexd)
            else:
                _add(ima_buf, path, hexd)
        else:
            _add(digests, path, hexd)
    return RuntimePolicy(
        digests={k: tuple(v) for k, v in digests.items()},
        keyrings={k: tuple(v) for k, v in keyrings.items()},
        ima_buf={k: tuple(v) for k, v in ima_buf.items()},
        excludes=tuple(excludes),
        log_hash_alg=log_hash_alg,
    )


def policy_from_tree(
    root: str | os.PathLike[str],
    *,
    algorithm: str = "sha256",
    excludes: Iterable[str] = (),
    boot_aggregates: Iterable[str] = (),
) -> RuntimePolicy:
    """Allow the current content of every regular file under ``root`` (absolute paths).

    Symbolic links are not followed, FIFOs and devices are never opened. A file that
    cannot be read is an error naming it: a policy silently missing files would fail
    attestation later for a reason nobody sees.
    """
    digests: dict[str, list[str]] = {}
    top = os.path.abspath(root)
    for entry in walk([top], recursive=True):
        if entry.error is not None:
            raise Error(f"{entry.path}: {entry.error}")
        if entry.skip_reason is not None:
            continue
        d = hash_file(entry.path, algorithm)
        # The log stores names with spaces as '_' (the kernel's rule), so the policy must too.
        _add(digests, os.path.realpath(entry.path).replace(" ", "_"), d.hex)
    for agg in boot_aggregates:
        _add(digests, "boot_aggregate", agg)
    return RuntimePolicy(
        digests={k: tuple(v) for k, v in digests.items()}, excludes=tuple(excludes)
    )
