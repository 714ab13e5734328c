"""The enforcement daemon: config, supervisor, worker, control socket, sd_notify.

``imaguard daemon`` runs :func:`run_daemon`; ``imaguard status`` asks :func:`query_status`.
The fanotify side (``imaguard.enforce``) is imported only by the processes that need it.
"""

from imaguard.service._build import build_guard, build_policy_set, hand_over_log
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
from imaguard.service._control import STATUS_KEYS, ControlServer, query_status, status_document
from imaguard.service._gate import Gate, parse_events
from imaguard.service._sdnotify import listen_fds, monotonic_usec, notify
from imaguard.service._service import Service
from imaguard.service._supervisor import Supervisor, backoff_delay, run_daemon

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EMBEDDED_DEFAULT",
    "LOCKS",
    "MODES",
    "STATUS_KEYS",
    "Config",
    "ConfigError",
    "ControlServer",
    "Gate",
    "PolicySpec",
    "Service",
    "Supervisor",
    "backoff_delay",
    "build_guard",
    "build_policy_set",
    "hand_over_log",
    "listen_fds",
    "load_config",
    "monotonic_usec",
    "notify",
    "parse_config",
    "parse_events",
    "query_status",
    "run_daemon",
    "status_document",
]
