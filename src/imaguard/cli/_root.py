"""The root ``imaguard`` group, logging set-up and the one exit funnel (:func:`main`).

Verb groups live in their own modules and load only when used: ``COMMANDS`` maps each
verb to ``"module:attribute"`` and a one-line summary, so ``imaguard --help`` lists every
verb without importing any of them. Registering a new verb group is one line there.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import NamedTuple, NoReturn

import click

from imaguard.cli._common import EXIT_ERROR, EXIT_OK, _Exit, err
from imaguard.errors import Error


class Verb(NamedTuple):
    """Where a lazily loaded command lives and what ``imaguard --help`` says of it."""

    target: str  # "module:attribute"
    summary: str
    hidden: bool = False


# The verbs, in the order --help lists them, with the first line of each command's
# docstring (tests/cli/test_root.py checks that they agree).
_FILES, _LOG = "imaguard.cli._files", "imaguard.cli._log"
COMMANDS: dict[str, Verb] = {
    "sign": Verb(
        f"{_FILES}:sign",
        "Sign files: write a v2 signature (type 0x03) of their content (or v3 with --sigv3).",
    ),
    "verify": Verb(
        f"{_FILES}:verify", "Verify files against trusted keys; exit 1 if any file fails."
    ),
    "hash": Verb(
        f"{_FILES}:hash_cmd",
        "Store the digest value (0x04; 0x01 for md5/sha1, as the kernel) and print it.",
    ),
    "show": Verb(
        f"{_FILES}:show",
        "Decode what is stored for each file (type, algorithm, key id, sizes); no verification.",
    ),
    "keys": Verb("imaguard.cli._keys:keys", "Manage signing keys."),
    "policy": Verb("imaguard.cli._policy:policy", "Check, print and evaluate IMA policies."),
    "check": Verb(
        "imaguard.cli._check:check",
        "Decide for each file what the policies demand at HOOK; exit 0 all allowed, 1 any denied.",
    ),
    "measure": Verb(
        f"{_LOG}:measure",
        "Measure files into the log: one entry each (a new log starts with boot_aggregate).",
    ),
    "log": Verb(f"{_LOG}:log", "Show, export and verify measurement logs."),
    "evm": Verb(
        "imaguard.cli._evm:evm",
        "EVM: security.evm HMACs and signatures over a file's security metadata.",
    ),
    "daemon": Verb(
        "imaguard.cli._daemon:daemon",
        "Enforce the policy set at exec and open time on the watched filesystems.",
    ),
    "status": Verb(
        "imaguard.cli._daemon:status",
        "Ask the running daemon how it is; exit 2 when no daemon answers.",
    ),
    "exec": Verb(
        "imaguard.cli._exec:exec_cmd",
        "Run PROGRAM from a sealed, verified in-memory copy; its exit code is PROGRAM's.",
    ),
    "ctl": Verb(
        "imaguard.cli._ctl:ctl",
        "Talk to the daemon's policy service: policies, owners, decisions, direct calls.",
    ),
    "digestlist": Verb(
        "imaguard.cli._digestlist:digestlist",
        "Make, sign, verify and show digest lists; load them into the daemon's trust database.",
    ),
    "trust": Verb(
        "imaguard.cli._digestlist:trust",
        "Ask which digest lists vouch for a file's content or a digest.",
    ),
    "agent": Verb(
        "imaguard.cli._agent:agent",
        "Attest this host to Keylime: quotes of the TPM with imaguard's log as the IMA list.",
    ),
    # Old spellings, kept working but not listed.
    "info": Verb(f"{_FILES}:show", "", hidden=True),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, from a name → :class:`Verb` table."""

    def __init__(self, *args: object, lazy: Mapping[str, Verb], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        listed = [n for n, v in self.lazy.items() if not v.hidden]
        return listed + sorted(set(super().list_commands(ctx)) - set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        verb = self.lazy.get(cmd_name)
        if verb is None:
            return super().get_command(ctx, cmd_name)
        module, _, attr = verb.target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{verb.target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        rows = [
            (n, click.Command(n, help=v.summary).get_short_help_str(limit))
            for n, v in self.lazy.items()
            if not v.hidden
        ]
        for name in sorted(set(super().list_commands(ctx)) - set(self.lazy)):
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


_debug = False


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("imaguard: %(levelname)s: %(message)s"))
    root = logging.getLogger("imaguard")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _version() -> str:
    import imaguard

    return imaguard.__version__


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="imaguard", prog_name="imaguard", version=_version())
@click.option(
    "-v", "--verbose", count=True, help="More output (-vv for debug logs); tracebacks of bugs."
)
@click.option("--debug", is_flag=True, help="Debug logs and the traceback of an unexpected error.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """imaguard: sign, verify and hash files the way the kernel's IMA and evmctl do."""
    global _debug
    _debug = debug or verbose > 0
    _configure_logging(2 if debug else verbose)
    ctx.obj = {"verbose": verbose}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: run the command and map every outcome to an exit code (the only place)."""
    global _debug
    _debug = False
    code = EXIT_OK
    fast = False
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="imaguard",
            standalone_mode=False,
        )
    except _Exit as e:
        code = e.code
        fast = e.fast and argv is None  # the process's own entry point, not a caller's
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = EXIT_ERROR
    except click.exceptions.Abort:
        err("aborted")
        code = EXIT_ERROR
    except Error as e:
        err(str(e))
        code = EXIT_ERROR
    except KeyboardInterrupt:
        err("interrupted")
        code = 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_ERROR
    except Exception as e:  # a bug: one line, or the traceback with -v/--debug
        if _debug:
            traceback.print_exc(file=sys.stderr)
        err(
            f"internal error: {type(e).__name__}: {e}"
            + ("" if _debug else " (run with -v or --debug for the traceback)")
        )
        code = EXIT_ERROR
    if fast:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """End the process without finalizing the interpreter (about 10 ms of freeing objects
    and modules that the OS frees at once): flush the streams, run the atexit handlers
    (logging's, coverage's), then ``os._exit``. Only for a command that said it holds
    nothing else to flush or close; if a stream cannot be flushed, the normal exit runs.
    """
    import atexit

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    atexit._run_exitfuncs()
    os._exit(code)
