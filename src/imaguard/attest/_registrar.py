"""Registration with Keylime's registrar, and activation of the AK's credential.

The registrar's agent-facing routes are plain HTTP (``keylime/web/registrar_server.py``
``_registration_routes`` and ``_v2_compat_routes``, ``allow_insecure=True``):

1. ``GET /version``: the API versions it speaks; the agent takes the newest 2.x it
   speaks too.
2. ``POST /v{api}/agents/{uuid}`` with ``ek_tpm``, ``ekcert``, ``aik_tpm`` (Base64
   ``TPM2B_PUBLIC`` / DER), ``mtls_cert`` (PEM), ``ip``, ``port``: the registrar answers
   ``{"blob": ...}``, a credential made for the EK and the AK's name
   (``RegistrarAgent.produce_ak_challenge`` → ``Tpm.encrypt_aik_with_ek``).
3. The TPM activates the credential (only the TPM holding both keys can); the agent
   answers ``POST /v{api}/agents/{uuid}/activate`` with ``auth_tag`` = HMAC-SHA384 keyed
   with the Base64 of the secret, over the uuid (``RegistrarAgent.verify_ak_response``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from typing import Any

from imaguard.errors import BackendError

__all__ = ["API_VERSIONS", "Registrar", "auth_tag"]

_log = logging.getLogger(__name__)

API_VERSIONS = ("2.1", "2.2", "2.3", "2.4", "2.5", "2.6")
"""The agent API versions imaguard's agent speaks (Keylime 7.14: 2.0-2.6 and 3.0,
keylime/api_version.py; pull mode is 2.x)."""
TIMEOUT = 30.0


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def auth_tag(secret: bytes, uuid: str) -> str:
    """The activation answer (``keylime/crypto.py`` ``do_hmac``)."""
    key = base64.b64encode(secret)
    return hmac.new(key, uuid.encode("utf-8"), hashlib.sha384).hexdigest()


class Registrar:
    """The registrar at ``host:port`` (its plain-HTTP port)."""

    def __init__(self, host: str, port: int, *, timeout: float = TIMEOUT) -> None:
        h = f"[{host}]" if ":" in host else host
        self.base = f"http://{h}:{port}"
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        # The URL is always http://HOST:PORT/... built here (S310: no user-given scheme).
        req = urllib.request.Request(  # noqa: S310
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode("utf-8", "replace")
            raise BackendError(
                f"registrar {self.base}: {method} {path}: HTTP {e.code} {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            raise BackendError(f"registrar {self.base}: {method} {path}: {e}") from None
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError as e:
            raise BackendError(f"registrar {self.base}: {path}: not JSON ({e})") from None
        return doc.get("results", {}) if isinstance(doc, dict) else {}

    def api_version(self) -> str:
        """The newest version both speak."""
        results = self._request("GET", "/version")
        theirs = results.get("supported_versions") or [results.get("current_version")]
        common = sorted(set(API_VERSIONS) & {str(v) for v in theirs if v}, key=_key)
        if not common:
            raise BackendError(
                f"registrar {self.base}: no common API version (it speaks {theirs}, "
                f"the agent {list(API_VERSIONS)})"
            )
        return common[-1]

    def register(
        self,
        version: str,
        uuid: str,
        *,
        ek_tpm: bytes,
        ekcert: bytes | None,
        aik_tpm: bytes,
        mtls_cert: str,
        ip: str,
        port: int,
    ) -> bytes:
        """Register; returns the credential blob to activate."""
        body = {
            "ek_tpm": base64.b64encode(ek_tpm).decode(),
            "ekcert": base64.b64encode(ekcert).decode() if ekcert else None,
            "aik_tpm": base64.b64encode(aik_tpm).decode(),
            "mtls_cert": mtls_cert,
            "ip": ip,
            "port": port,
        }
        results = self._request("POST", f"/v{version}/agents/{uuid}", body)
        blob = results.get("blob") if isinstance(results, dict) else None
        if not isinstance(blob, str):
            raise BackendError(f"registrar {self.base}: registration returned no credential blob")
        try:
            return base64.b64decode(blob, validate=True)
        except ValueError as e:
            raise BackendError(f"registrar {self.base}: the credential blob is not Base64") from e

    def activate(self, version: str, uuid: str, tag: str) -> None:
        self._request("POST", f"/v{version}/agents/{uuid}/activate", {"auth_tag": tag})
        _log.info("agent %s activated with the registrar %s", uuid, self.base)
