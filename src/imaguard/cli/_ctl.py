"""``imaguard ctl``: the policy service of a running daemon, thin over ``imaguard.Client``.

Each verb sends one request (docs/protocol.md). A refusal prints the daemon's message with
its code and exits 2; ``ctl appraise`` exits 1 when the file fails appraisal.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import click

from imaguard.cli._common import EXIT_FAILED, _Exit

if TYPE_CHECKING:
    from imaguard.service import Client

__all__ = ["ctl"]

LOCK_CHOICES = ("open", "append-only", "signed-only", "sealed")


def _client(ctx: click.Context) -> Client:
    from imaguard.service import Client

    return Client((ctx.find_object(dict) or {}).get("socket"))


def _json(ctx: click.Context) -> bool:
    return bool((ctx.find_object(dict) or {}).get("json"))


def _emit(ctx: click.Context, doc: Any, text: str | None = None) -> None:
    if _json(ctx) or text is None:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(text)


def _stamp(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError):
        return "?"


def _entry_line(p: dict[str, Any]) -> str:
    return (
        f"{p.get('name')}  owner={p.get('owner')}  lock={p.get('lock')}  "
        f"version={p.get('version')}  rules={p.get('rules')}  "
        f"loaded={_stamp(p.get('loaded_at'))}  origin={p.get('origin')}"
    )


@click.group()
@click.option(
    "--socket",
    "socket_path",
    default=None,
    help="The daemon's control socket (default $IMAGUARD_SOCKET, else /run/imaguard/control.sock).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answers as JSON.")
@click.pass_context
def ctl(ctx: click.Context, socket_path: str | None, as_json: bool) -> None:
    """Talk to the daemon's policy service: policies, owners, decisions, direct calls."""
    ctx.ensure_object(dict)
    ctx.obj = {**ctx.obj, "socket": socket_path, "json": as_json}


@ctl.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """The daemon's status (as ``imaguard status``)."""
    with _client(ctx) as c:
        doc = c.status()
    d = doc.get("decisions", {})
    _emit(
        ctx,
        doc,
        f"ready: {'yes' if doc.get('ready') else 'no'}  mode: {doc.get('mode')}  "
        f"decisions: {d.get('allowed', 0)} allowed, {d.get('denied', 0)} denied  "
        f"policies: {len(doc.get('policies', []))}",
    )


@ctl.command()
@click.pass_context
def whoami(ctx: click.Context) -> None:
    """How the daemon sees this process, and the owners it may act for."""
    with _client(ctx) as c:
        doc = c.whoami()
    owners = ", ".join(doc.get("owners") or []) or "(none)"
    _emit(
        ctx,
        doc,
        f"pid {doc.get('pid')} uid {doc.get('uid')} gid {doc.get('gid')} exe {doc.get('exe')} "
        f"unit {doc.get('unit')}\nowners: {owners}",
    )


@ctl.command()
@click.pass_context
def policies(ctx: click.Context) -> None:
    """Every policy in force: name, owner, lock, version, rules, loaded-at."""
    with _client(ctx) as c:
        items = c.policies()
    _emit(ctx, {"policies": items}, "\n".join(_entry_line(p) for p in items) or "(no policies)")


@ctl.command()
@click.argument("name")
@click.pass_context
def show(ctx: click.Context, name: str) -> None:
    """One policy: its entry and its rules."""
    with _client(ctx) as c:
        doc = c.show(name)
    _emit(ctx, doc, _entry_line(doc) + f"\ndigest={doc.get('digest')}\n" + doc.get("text", ""))


def _changed(ctx: click.Context, verb: str, doc: dict[str, Any]) -> None:
    _emit(ctx, doc, f"{verb}: " + _entry_line(doc))


_version = click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="The new version (default: the file's '#@ version N', else the old version + 1).",
)
_signature = click.option(
    "--signature",
    type=click.Path(dir_okay=False),
    default=None,
    help="A file holding the security.ima value signed over FILE (default: FILE's own "
    "security.ima or .sig, when it is signed).",
)


@ctl.command()
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--lock",
    type=click.Choice(LOCK_CHOICES),
    default="open",
    show_default=True,
    help="How the policy may change later.",
)
@_version
@_signature
@click.option(
    "--owner", default=None, help="The owner to load it for, when this process acts for several."
)
@click.pass_context
def load(
    ctx: click.Context,
    name: str,
    file: str,
    lock: str,
    version: int | None,
    signature: str | None,
    owner: str | None,
) -> None:
    """Load FILE as the new policy NAME, owned by the owner this process acts for."""
    with _client(ctx) as c:
        doc = c.load(name, file, lock=lock, version=version, signature=signature, owner=owner)
    _changed(ctx, "loaded", doc)


@ctl.command()
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@_version
@_signature
@click.pass_context
def replace(
    ctx: click.Context, name: str, file: str, version: int | None, signature: str | None
) -> None:
    """Replace policy NAME's rules with FILE's, as its lock allows."""
    with _client(ctx) as c:
        doc = c.replace(name, file, version=version, signature=signature)
    _changed(ctx, "replaced", doc)


@ctl.command()
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@_version
@click.pass_context
def append(ctx: click.Context, name: str, file: str, version: int | None) -> None:
    """Append FILE's rules to policy NAME."""
    with _client(ctx) as c:
        doc = c.append(name, file, version=version)
    _changed(ctx, "appended", doc)


@ctl.command()
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Remove policy NAME (only an open policy can be removed)."""
    with _client(ctx) as c:
        doc = c.remove(name)
    _emit(ctx, doc, f"removed: {name}")


@ctl.command()
@click.argument("name")
@click.pass_context
def seal(ctx: click.Context, name: str) -> None:
    """Seal policy NAME: no change at all until the machine reboots."""
    with _client(ctx) as c:
        doc = c.seal(name)
    _changed(ctx, "sealed", doc)


@ctl.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--hook", default="BPRM_CHECK", show_default=True, help="The hook (func=) asked.")
@click.option("--mask", default=None, help="The access mask (MAY_EXEC, MAY_READ|MAY_WRITE, ...).")
@click.pass_context
def explain(ctx: click.Context, path: str, hook: str, mask: str | None) -> None:
    """What the policies demand of PATH at HOOK, and whose rules say so (no side effect)."""
    with _client(ctx) as c:
        doc = c.explain(path, hook, mask)
    lines = [f"{doc.get('path')} at {doc.get('hook')}:"]
    for kind, a in (doc.get("actions") or {}).items():
        if a.get("required"):
            lines.append(
                f"  {kind}: required by {a.get('policy')}:{a.get('line')} (owner {a.get('owner')})"
            )
        else:
            lines.append(f"  {kind}: not required")
    if doc.get("conflict"):
        lines.append(f"  conflict: {doc['conflict'].get('reason')}")
    _emit(ctx, doc, "\n".join(lines))


@ctl.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--require",
    type=click.Choice(("signature", "digest")),
    default="signature",
    show_default=True,
    help="What counts as evidence.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.pass_context
def appraise(ctx: click.Context, path: str, require: str, as_json: bool) -> None:
    """The daemon appraises the file this command holds open (its descriptor is passed)."""
    with _client(ctx) as c:
        verdict = c.appraise(path, require=require)
    doc = verdict.to_dict()
    doc["path"] = os.path.abspath(path)
    if as_json or _json(ctx):
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(f"{path}: {verdict.describe()}")
    if not verdict.passed:
        raise _Exit(EXIT_FAILED)


@ctl.command()
@click.option("--owner", default=None, help="Only this owner's (default: every owner you act for).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new decisions as they come.")
@click.pass_context
def decisions(ctx: click.Context, owner: str | None, follow: bool) -> None:
    """The decisions in which your rules took part (newest last)."""
    as_json = _json(ctx)
    with _client(ctx) as c:
        for d in c.decisions(owner, follow=follow):
            if as_json:
                click.echo(json.dumps(d, sort_keys=True))
            else:
                rules = ", ".join(
                    f"{p.get('policy')}:{p.get('line')}" for p in d.get("provenance", [])
                )
                click.echo(
                    f"{_stamp(d.get('time'))} {'allowed' if d.get('allowed') else 'DENIED'} "
                    f"{d.get('hook')} {d.get('path')} pid {d.get('pid')} ({d.get('exe')}) "
                    f"owners {','.join(d.get('owners', []))} rules {rules}"
                    + (f" cause {d['cause']}" if d.get("cause") else "")
                    + (f" [{d['dropped']} dropped]" if d.get("dropped") else "")
                )
