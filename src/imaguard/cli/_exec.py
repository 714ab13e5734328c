"""``imaguard exec``: run a program from its verified in-memory copy (imaguard.loaders)."""

from __future__ import annotations

import os
from typing import Any

import click

from imaguard.appraise import STORE_NAMES
from imaguard.cli._common import _Exit, err, policy_spec

__all__ = ["exec_cmd"]

EXIT_REFUSED = 126  # as a shell says "cannot execute"
EXIT_NOT_FOUND = 127


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--keyring",
    "keyrings",
    multiple=True,
    required=True,
    type=click.Path(),
    help="Directory (or file) of trusted certificates; repeatable.",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    help="[NAME=]FILE: a policy run for --hook on each verified copy (measurement, "
    "audit, appraisal); repeatable.",
)
@click.option(
    "--hook", default="BPRM_CHECK", show_default=True, help="The hook the policies are asked for."
)
@click.option(
    "--mode",
    type=click.Choice(("enforce", "log")),
    default="enforce",
    show_default=True,
    help="log: run what fails verification anyway, and say so.",
)
@click.option(
    "--trust-loader",
    is_flag=True,
    help="Do not verify the ELF loader (PT_INTERP): e.g. an unsigned distribution ld.so on "
    "a read-only root, or under the daemon's exec rule.",
)
@click.option(
    "--state",
    type=click.Path(file_okay=False),
    default=None,
    help="State directory for --policy (measurement log, audit trail).",
)
@click.option(
    "--store",
    type=click.Choice(STORE_NAMES),
    default=None,
    help="Where signatures live (default security.ima as root, user.ima otherwise).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(
    keyrings: tuple[str, ...],
    policies: tuple[str, ...],
    hook: str,
    mode: str,
    trust_loader: bool,
    state: str | None,
    store: str | None,
    command: tuple[str, ...],
) -> None:
    """Run PROGRAM from a sealed, verified in-memory copy; its exit code is PROGRAM's.

    Usage: imaguard exec --keyring DIR [...] -- PROGRAM [ARGS...]. A #! script's
    interpreter is verified the same way and gets the script as its verified copy; an
    ELF's loader (PT_INTERP) is verified on disk. Refused: exit 126 with the reason;
    PROGRAM not found: 127. A setuid program is refused (a memfd exec drops setuid).
    """
    from imaguard.appraise import MemoryStore
    from imaguard.crypto import Keyring
    from imaguard.errors import FileError, VerificationError
    from imaguard.loaders import prepare_exec

    ring = Keyring.load(*keyrings)
    guard: Any = None
    if policies:
        from imaguard.core import Guard

        guard = Guard.from_files(
            dict(policy_spec(p) for p in policies),
            keyrings,
            state=state,
            mode="log" if mode == "log" else "enforce",
            store=MemoryStore(),
        )
    try:
        prepared = prepare_exec(
            list(command),
            ring,
            guard=guard,
            hook=hook,
            mode="log" if mode == "log" else "enforce",
            store=store,
            verify_loader=not trust_loader,
        )
    except VerificationError as e:
        err(f"exec refused: {e}")
        raise _Exit(EXIT_REFUSED) from e
    except FileError as e:
        err(str(e))
        raise _Exit(EXIT_NOT_FOUND if not os.path.exists(command[0]) else EXIT_REFUSED) from e
    finally:
        if guard is not None:
            guard.close()
    for failure in prepared.failures:
        err(f"log mode: running anyway: {failure}")
    try:
        prepared.exec()
    except OSError as e:
        err(f"{prepared.program}: cannot execute: {e.strerror or e}")
        raise _Exit(EXIT_REFUSED) from e
    except ValueError as e:  # e.g. a NUL byte in an argument or the environment
        err(f"{prepared.program}: cannot execute: {e}")
        raise _Exit(EXIT_REFUSED) from e
