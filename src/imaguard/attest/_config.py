"""The agent's configuration file (TOML), e.g. ``/etc/imaguard/agent.toml``::

    uuid = "d432fbb3-d2f1-4a97-9ef7-75bd81c00001"
    registrar = "127.0.0.1:8890"     # the registrar's agent port (plain HTTP)
    listen = "127.0.0.1:9002"        # the agent's REST API (HTTPS, mTLS); registered as
                                     # the address the verifier and tenant contact
    tpm = "device:/dev/tpmrm0"       # TCTI
    state = "/var/lib/imaguard"      # imaguard's state directory (the log)

    [tls]
    cert = "/var/lib/imaguard-agent/server-cert.pem"   # made (self-signed) when missing
    key = "/var/lib/imaguard-agent/server-key.pem"     # made (RSA 2048) when missing
    ca = "/var/lib/keylime/cv_ca/cacert.crt"           # CA of the verifier's client cert

Relative paths are relative to the file's directory. Every problem is one
:class:`~imaguard.UsageError` naming the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaguard.errors import UsageError

__all__ = ["DEFAULT_CONFIG", "AgentConfig", "load_config"]

DEFAULT_CONFIG = "/etc/imaguard/agent.toml"
_UUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEYS = {"uuid", "registrar", "listen", "tpm", "state", "tls", "bank"}
_TLS_KEYS = {"cert", "key", "ca"}


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings, as :func:`load_config` reads them (paths made absolute)."""

    uuid: str
    registrar: tuple[str, int]
    listen: tuple[str, int]
    tpm: str
    state: Path
    tls_cert: Path
    tls_key: Path
    tls_ca: Path
    bank: str = "sha256"


def _address(value: Any, where: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise UsageError(f"{where}: must be a string HOST:PORT")
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{where}: {value!r} is not HOST:PORT")
    return host, int(port)


def _string(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: {key!r} is required (a non-empty string)")
    return value


def load_config(path: str | os.PathLike[str] | None = None) -> AgentConfig:
    """Read and check the agent's configuration file."""
    file = Path(path or DEFAULT_CONFIG)
    try:
        with open(file, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{file}: cannot read the agent configuration ({e.strerror})") from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{file}: not valid TOML ({e})") from e
    unknown = set(doc) - _KEYS
    if unknown:
        raise UsageError(f"{file}: unknown key(s) {', '.join(sorted(unknown))}")
    base = file.parent

    def rel(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else base / p

    uuid = _string(doc, "uuid", str(file))
    if not _UUID.match(uuid):
        raise UsageError(f"{file}: uuid {uuid!r}: letters, digits, '-', '_', '.' (1-64)")
    tls = doc.get("tls")
    if not isinstance(tls, dict):
        raise UsageError(f"{file}: a [tls] table with cert, key and ca is required")
    unknown = set(tls) - _TLS_KEYS
    if unknown:
        raise UsageError(f"{file}: unknown key(s) in [tls]: {', '.join(sorted(unknown))}")
    bank = doc.get("bank", "sha256")
    if bank not in ("sha1", "sha256", "sha384", "sha512"):
        raise UsageError(f"{file}: bank {bank!r}: one of sha1, sha256, sha384, sha512")
    return AgentConfig(
        uuid=uuid,
        registrar=_address(doc.get("registrar"), f"{file}: registrar"),
        listen=_address(doc.get("listen"), f"{file}: listen"),
        tpm=_string(doc, "tpm", str(file)),
        state=rel(_string(doc, "state", str(file))),
        tls_cert=rel(_string(tls, "cert", f"{file} [tls]")),
        tls_key=rel(_string(tls, "key", f"{file} [tls]")),
        tls_ca=rel(_string(tls, "ca", f"{file} [tls]")),
        bank=bank,
    )
