"""What every verb module shares: exit codes, the exit signal, messages and file I/O.

Exit codes, decided in one place (:func:`imaguard.cli._root.main`):

* 0 - everything asked for succeeded (skipped non-regular files do not count against it);
* 1 - some file (policy, log) failed verification;
* 2 - a usage or operational error (bad option, unreadable key, a file that could not
  be processed), or an unexpected internal error.
"""

from __future__ import annotations

import os

import click

from imaguard._fsutil import atomic_write
from imaguard.errors import Error

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2


class _Exit(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a command to end with an exit code; :func:`main` turns it into one."""

    def __init__(self, code: int, *, fast: bool = False) -> None:
        super().__init__(code)
        self.code = code
        self.fast = fast
        """The command holds nothing to flush or close but the standard streams: the
        process may end without tearing the interpreter down (see :func:`main`)."""


def err(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    click.echo(f"imaguard: {message}", err=True)


def read_file(path: str) -> bytes:
    """The bytes of PATH, or an :class:`Error` naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Error(f"{path}: cannot read: {e.strerror or e}") from e


def write_atomic(path: str, data: bytes) -> None:
    """Write PATH whole or not at all (:func:`imaguard._fsutil.atomic_write`); one clear error."""
    try:
        atomic_write(path, data)
    except OSError as e:
        raise Error(f"{path}: cannot write: {e.strerror or e}") from e


def policy_spec(spec: str) -> tuple[str, str]:
    """``NAME=FILE`` or ``FILE`` (named after the file's stem) as (name, path)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name, path
    return os.path.splitext(os.path.basename(spec))[0] or spec, spec


def pick_alias(value: object, alias: object, new: str, old: str) -> object:
    """Merge an option with its hidden old spelling (both default to None)."""
    if alias is None:
        return value
    if value is not None and value != alias:
        raise click.UsageError(f"{old} is the old spelling of {new}: give only {new}")
    return alias
