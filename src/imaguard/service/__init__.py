"""The enforcement daemon: config, supervisor, worker, control socket, sd_notify; the
policy service and its client.

``imaguard daemon`` runs :func:`run_daemon`; ``imaguard status`` and ``imaguard ctl`` talk
to it through :class:`Client` (docs/protocol.md).
The fanotify side (``imaguard.enforce``) is imported only by the processes that need it.
"""

from imaguard.service._build import build_guard, build_policy_set, hand_over_log
from imaguard.service._client import Client
from imaguard.service._config import (
    DEFAULT_CONFIG_PATH,
    EMBEDDED_DEFAULT,
    LOCKS,
    MODES,
    Config,
    ConfigError,
    PolicySpec,
    load_config,
    parse_config,
)
from imaguard.service._control import STATUS_KEYS, query_status, status_document
from imaguard.service._gate import Gate, parse_events
from imaguard.service._owners import Owner, Peer, load_owners, parse_owner
from imaguard.service._policies import PolicyService, PolicyState, apply_state
from imaguard.service._protocol import ERROR_CODES, VERSION, ProtocolError
from imaguard.service._sdnotify import listen_fds, monotonic_usec, notify
from imaguard.service._server import ControlServer, Reply
from imaguard.service._service import Service
from imaguard.service._supervisor import Supervisor, backoff_delay, run_daemon

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EMBEDDED_DEFAULT",
    "ERROR_CODES",
    "LOCKS",
    "MODES",
    "STATUS_KEYS",
    "VERSION",
    "Client",
    "Config",
    "ConfigError",
    "ControlServer",
    "Gate",
    "Owner",
    "Peer",
    "PolicyService",
    "PolicySpec",
    "PolicyState",
    "ProtocolError",
    "Reply",
    "Service",
    "Supervisor",
    "apply_state",
    "backoff_delay",
    "build_guard",
    "build_policy_set",
    "hand_over_log",
    "listen_fds",
    "load_config",
    "load_owners",
    "monotonic_usec",
    "notify",
    "parse_config",
    "parse_events",
    "parse_owner",
    "query_status",
    "run_daemon",
    "status_document",
]
