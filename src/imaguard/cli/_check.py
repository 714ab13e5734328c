"""The ``check`` verb: the integrity core (a Guard) deciding for files at a hook."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, cast

import click

from imaguard.cli._common import EXIT_FAILED, EXIT_OK, _Exit, err, policy_spec
from imaguard.cli._options import (
    check_hook,
    hook_option,
    json_option,
    keyring_option,
    mask_option,
    policy_mode_option,
    policy_options,
    resolve_store,
    store_options,
)

if TYPE_CHECKING:
    from imaguard.core import Guard
    from imaguard.policy import Mode as PolicyMode


@click.command()
@policy_options
@policy_mode_option("imaguard")
@keyring_option("Trusted certificates (file or directory); repeatable.")
@click.option(
    "--state",
    default=None,
    type=click.Path(file_okay=False),
    help="Keeps the measurement log, the integrity cache and the audit trail.",
)
@hook_option()
@mask_option
@click.option("--as-uid", type=int, default=None, help="Decide as this uid (default: the caller).")
@click.option(
    "--mode",
    type=click.Choice(["enforce", "log", "fix", "off"]),
    default="enforce",
    show_default=True,
    help="Enforcement mode, as the kernel's ima_appraise=.",
)
@store_options
@click.option(
    "--syslog",
    "use_syslog",
    is_flag=True,
    help="Also send the audit trail to syslog (journald reads it).",
)
@json_option("Print a JSON array of decisions.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def check(
    policies: tuple[str, ...],
    builtin_names: str | None,
    policy_mode: str | None,
    keyrings: tuple[str, ...],
    state: str | None,
    hook: str | None,
    mask: str | None,
    as_uid: int | None,
    mode: str,
    store: str | None,
    xattr_user: bool,
    use_syslog: bool,
    as_json: bool,
    paths: tuple[str, ...],
) -> None:
    """Decide for each file what the policies demand at HOOK; exit 0 all allowed, 1 any denied.

    Without --state, measure=passed means the file was measured into a throwaway log that
    is deleted when the command ends (a note on stderr says so); --state DIR keeps the log,
    the integrity cache and the audit trail.
    """
    from imaguard.core import Guard, current_subject
    from imaguard.policy import Subject

    policy_mode = policy_mode or "imaguard"
    hook = check_hook(hook, policy_mode)
    if not policies and builtin_names is None:
        raise click.UsageError("give --policy [NAME=]FILE (repeatable) or --builtin NAMES")
    named = dict(policy_spec(p) for p in policies)
    st = resolve_store(store, xattr_user)
    subject = None
    if as_uid is not None:
        me = current_subject()
        subject = Subject(uid=as_uid, euid=as_uid, gid=me.gid, egid=me.egid)
    guard: Guard
    with Guard.from_files(
        named,
        keyrings,
        state,
        cast("Any", mode),
        cast("PolicyMode", policy_mode),
        builtin=builtin_names,
        store=st,
        audit=_audit_sink(state, use_syslog),
    ) as guard:
        decisions = [guard.process(p, hook=hook, mask=mask, subject=subject) for p in paths]
    if state is None and any(
        a.required for d in decisions for k, a in d.actions.items() if k == "measure"
    ):
        err(
            "note: no --state: the measurements went to a throwaway log, deleted on exit "
            "(give --state DIR to keep the log)"
        )
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in decisions], indent=2))
    else:
        for d in decisions:
            verdict = "allowed" if d.allowed else "DENIED"
            parts = []
            for kind, a in d.actions.items():
                if a.required:
                    parts.append(f"{kind}={a.outcome}" + (f"({a.cause})" if a.cause else ""))
            click.echo(f"{d.path}: {verdict} " + (" ".join(parts) or "(no rule applies)"))
    raise _Exit(EXIT_OK if all(d.allowed for d in decisions) else EXIT_FAILED)


def _audit_sink(state: str | None, use_syslog: bool) -> Any:
    """The check command's audit trail: STATE/audit.jsonl and/or syslog (None: the default)."""
    if not use_syslog:
        return None
    from imaguard.core import AuditSink

    path = os.path.join(state, "audit.jsonl") if state is not None else None
    if state is not None:
        os.makedirs(state, exist_ok=True)
    return AuditSink(path, use_syslog=True)
