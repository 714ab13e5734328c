"""``imaguard daemon`` and ``imaguard status``: the enforcement service's two commands.

Both import the service package inside the command, so ``imaguard --help`` stays fast.
"""

from __future__ import annotations

import json
import logging

import click

__all__ = ["daemon", "status"]

DEFAULT_SOCKET = "/run/imaguard/control.sock"


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The config file (default /etc/imaguard/imaguard.toml; without it, measure every "
    "exec and deny nothing).",
)
@click.option(
    "--permissive", is_flag=True, help="Decide and audit, but allow everything (try this first)."
)
@click.option(
    "--foreground", is_flag=True, help="Stay in the foreground (as systemd runs it, Type=notify)."
)
@click.pass_context
def daemon(ctx: click.Context, config_path: str | None, permissive: bool, foreground: bool) -> None:
    """Enforce the policy set at exec and open time on the watched filesystems."""
    from imaguard.service import run_daemon

    verbose = (ctx.obj or {}).get("verbose", 0)
    level = logging.DEBUG if verbose > 1 else logging.INFO
    code = run_daemon(config_path, permissive=permissive, foreground=foreground, log_level=level)
    if code:
        ctx.exit(code)


@click.command()
@click.option(
    "--socket",
    "socket_path",
    default=DEFAULT_SOCKET,
    show_default=True,
    help="The daemon's control socket.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(socket_path: str, as_json: bool) -> None:
    """Ask the running daemon how it is; exit 2 when no daemon answers."""
    from imaguard.service import query_status

    doc = query_status(socket_path)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    d, c = doc.get("decisions", {}), doc.get("cache", {})
    click.echo(f"ready:     {'yes' if doc.get('ready') else 'no'}")
    click.echo(f"mode:      {doc.get('mode')}")
    click.echo(f"pid:       {doc.get('pid')} (worker {doc.get('worker_pid')})")
    click.echo(f"watched:   {', '.join(doc.get('watched', []))}")
    click.echo(f"decisions: {d.get('allowed', 0)} allowed, {d.get('denied', 0)} denied")
    click.echo(f"cache:     {c.get('hits', 0)} hits, {c.get('misses', 0)} misses")
    click.echo(f"queue:     {doc.get('queue', 0)}")
    click.echo(f"restarts:  {doc.get('restarts', 0)}")
    for p in doc.get("policies", []):
        click.echo(
            f"policy:    {p.get('name')} (owner {p.get('owner')}, lock {p.get('lock')}, "
            f"version {p.get('version')})"
        )
    log = doc.get("log")
    if isinstance(log, dict):
        state = "ok" if log.get("ok") else f"FAILING: {log.get('error')}"
        click.echo(
            f"log:       {state} ({log.get('entries', 0)} entries, "
            f"{log.get('failed_appends', 0)} failed appends)"
        )
    if doc.get("last_reload_error"):
        click.echo(f"last reload refused: {doc['last_reload_error']}")
