"""``imaguard agent``: a Keylime agent for this host (imaguard.attest)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import click

__all__ = ["agent"]

_log = logging.getLogger(__name__)


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The agent's config file (default /etc/imaguard/agent.toml).",
)
@click.option(
    "--no-register",
    is_flag=True,
    help="Serve without registering (the registrar already holds this agent's keys).",
)
def agent(config_path: str | None, no_register: bool) -> None:
    """Attest this host to Keylime: quotes of the TPM with imaguard's log as the IMA list.

    Registers with Keylime's registrar (EK, AK, credential activation), then answers the
    verifier's and the tenant's quotes over mTLS until SIGTERM or SIGINT.
    """
    from imaguard.attest import Agent, load_config

    config = load_config(config_path)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("signal %d: stopping", signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Agent(config) as a:
            if not no_register:
                version = a.register()
                _log.info("registered and activated (API %s)", version)
            host, port = a.start()
            click.echo(f"agent {config.uuid} listening on {host}:{port}", err=True)
            while not stop.wait(1.0):
                pass
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
