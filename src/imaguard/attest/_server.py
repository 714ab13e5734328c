"""The agent: registration, then Keylime's agent REST API (pull mode) over mTLS.

Routes (API 2.1-2.6; the Rust agent's ``keylime-agent/src/api.rs`` and
``quotes_handler.rs``, Keylime's ``cloud_verifier_tornado.py`` ``invoke_get_quote`` and
``tenant.py`` ``do_quote``), every answer ``{"code", "status", "results"}``:

* ``GET /version`` → ``supported_version``, ``supported_versions``;
* ``GET /v{api}/quotes/identity?nonce=N`` → ``quote``, ``hash_alg``, ``enc_alg``,
  ``sign_alg``, ``pubkey`` (the tenant's check before it adds the agent);
* ``GET /v{api}/quotes/integrity?nonce=N&mask=M&partial=0|1&ima_ml_entry=E`` → the
  same (``pubkey`` only for ``partial=0``) plus ``ima_measurement_list`` (imaguard's log,
  ASCII, from entry E on) and ``ima_measurement_list_entry`` (the first entry sent);
* ``GET /v{api}/agent/info`` (2.2+), ``GET /v{api}/keys/pubkey``;
* ``POST /v{api}/keys/ukey`` and ``/keys/vkey``, ``GET /v{api}/keys/verify?challenge=C``:
  the two halves of the tenant's bootstrap key, and the proof that the agent derived it;
  a payload (``payload`` in ``ukey``) is refused: this agent runs no payload scripts;
* ``POST /v{api}/notifications/revocation``: logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP

from imaguard.attest._config import AgentConfig
from imaguard.attest._imalist import ImaList
from imaguard.attest._registrar import API_VERSIONS, Registrar, auth_tag
from imaguard.attest._tls import TlsIdentity, ensure_identity, server_context
from imaguard.attest._tpm import MAX_NONCE, AttestTpm, mask_to_pcrs
from imaguard.errors import Error

__all__ = ["Agent"]

_log = logging.getLogger(__name__)

_VERSIONED = re.compile(r"^/v(\d+\.\d+)(/.*)$")
_ALNUM = re.compile(r"^[A-Za-z0-9]+$")
_SIGN_ALG = "rsassa"
_REQUEST_TIMEOUT = 30.0
_MAX_BODY = 1 << 20


class _HttpError(Exception):
    def __init__(self, code: int, status: str) -> None:
        super().__init__(status)
        self.code = code
        self.status = status


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    agent: Agent
    tls: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs in the request's own thread, never in the accept loop.
        request.settimeout(_REQUEST_TIMEOUT)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            _log.info("TLS handshake with %s failed: %s", client_address[0], e)
            return
        try:
            _Handler(conn, client_address, self)
        finally:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.client_address[0], format % args)

    def _send(self, code: int, status: str, results: dict[str, Any] | None = None) -> None:
        body = json.dumps({"code": code, "status": status, "results": results or {}}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        agent = self.server.agent
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if method == "GET" and url.path.rstrip("/") == "/version":
                results = {
                    "supported_version": API_VERSIONS[-1],
                    "supported_versions": list(API_VERSIONS),
                }
                self._send(200, "Success", results)
                return
            m = _VERSIONED.match(url.path)
            if m is None:
                raise _HttpError(404, f"no such resource: {url.path}")
            version, route = m.group(1), m.group(2).rstrip("/")
            if version not in API_VERSIONS:
                raise _HttpError(400, f"API version not supported: {version}")
            body: dict[str, Any] = {}
            if method == "POST":
                body = self._body()
            started = time.perf_counter()
            results = agent.handle(method, version, route, query, body)
            _log.debug("%s %s: %.1f ms", method, route, (time.perf_counter() - started) * 1000)
            self._send(200, "Success", results)
        except _HttpError as e:
            _log.info("%s %s: %d %s", method, url.path, e.code, e.status)
            self._send(e.code, e.status)
        except Error as e:
            _log.error("%s %s: %s", method, url.path, e)
            self._send(500, str(e))

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise _HttpError(400, "bad Content-Length") from None
        if not 0 <= length <= _MAX_BODY:
            raise _HttpError(413, f"body of {length} bytes (at most {_MAX_BODY})")
        raw = self.rfile.read(length)
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            raise _HttpError(400, "body is not JSON") from None
        if not isinstance(doc, dict):
            raise _HttpError(400, "body is not a JSON object")
        return doc

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


class Agent:
    """A Keylime agent for an imaguard host (see the module doc).

    ``start()`` serves in a background thread, ``stop()`` ends it; ``register()`` does
    the registrar's part. The TPM is opened here and closed by ``close()``.
    """

    def __init__(self, config: AgentConfig, *, tpm: AttestTpm | None = None) -> None:
        self.config = config
        self.identity: TlsIdentity = ensure_identity(
            config.tls_cert, config.tls_key, config.uuid, config.listen[0]
        )
        self._tls = server_context(config.tls_cert, config.tls_key, config.tls_ca)
        self.ima = ImaList(config.state)
        self.tpm = tpm if tpm is not None else AttestTpm(config.tpm, bank=config.bank)
        self._pubkey = self.identity.pubkey_pem
        self._keys_lock = threading.Lock()
        self._u: bytes | None = None
        self._v: bytes | None = None
        self._auth_tag: str | None = None
        self._k: bytes | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.quotes = 0
        self.reset_count: int | None = None

    # -- registration ----------------------------------------------------------------------
    def register(self) -> str:
        """Register with the registrar and activate; returns the API version used."""
        host, port = self.config.registrar
        reg = Registrar(host, port)
        version = reg.api_version()
        blob = reg.register(
            version,
            self.config.uuid,
            ek_tpm=self.tpm.ek_public,
            ekcert=self.tpm.ek_cert,
            aik_tpm=self.tpm.ak_public,
            mtls_cert=self.identity.cert_pem,
            ip=self.config.listen[0],
            port=self.config.listen[1],
        )
        secret = self.tpm.activate_credential(blob)
        reg.activate(version, self.config.uuid, auth_tag(secret, self.config.uuid))
        return version

    # -- serving ---------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Serve in a background thread; returns the address bound."""
        host, port = self.config.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        _Server.address_family = family
        try:
            server = _Server((host, port), _Handler)
        except OSError as e:
            raise Error(f"cannot listen on {host}:{port}: {e.strerror}") from e
        server.agent = self
        server.tls = self._tls
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        bound = server.server_address
        _log.info("agent %s serves on %s:%s", self.config.uuid, bound[0], bound[1])
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.tpm.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------------
    def handle(
        self,
        method: str,
        version: str,
        route: str,
        query: dict[str, str],
        body: dict[str, Any],
    ) -> dict[str, Any]:
        """One API call (the path after ``/v{version}``); raises _HttpError for a refusal."""
        if method == "GET" and route == "/quotes/identity":
            return self._quote(version, query, integrity=False)
        if method == "GET" and route == "/quotes/integrity":
            return self._quote(version, query, integrity=True)
        if method == "GET" and route == "/agent/info" and version != "2.1":
            return {
                "agent_uuid": self.config.uuid,
                "tpm_hash_alg": self.tpm.bank,
                "tpm_enc_alg": self._enc_alg(version),
                "tpm_sign_alg": _SIGN_ALG,
                "ek_handle": "0x81010001",
            }
        if method == "GET" and route == "/keys/pubkey":
            return {"pubkey": self._pubkey}
        if method == "POST" and route in ("/keys/ukey", "/keys/vkey"):
            return self._key_half(route[-4], body)
        if method == "GET" and route == "/keys/verify":
            return self._verify(query)
        if method == "POST" and route == "/notifications/revocation":
            _log.warning("revocation notification: %s", json.dumps(body)[:2000])
            return {}
        raise _HttpError(404 if method == "GET" else 405, f"{method} {route} is not supported")

    @staticmethod
    def _enc_alg(version: str) -> str:
        # Keylime and the Rust agent name RSA 2048 "rsa" before API 2.5, "rsa2048" since.
        return "rsa2048" if tuple(map(int, version.split("."))) >= (2, 5) else "rsa"

    def _quote(self, version: str, query: dict[str, str], *, integrity: bool) -> dict[str, Any]:
        nonce = query.get("nonce", "")
        if not _ALNUM.match(nonce) or len(nonce) > MAX_NONCE:
            raise _HttpError(400, f"nonce must be 1-{MAX_NONCE} letters and digits")
        pcrs: list[int] = []
        partial = "0"
        start = 0
        if integrity:
            try:
                pcrs = mask_to_pcrs(query.get("mask", "0"))
            except Error as e:
                raise _HttpError(400, str(e)) from None
            partial = query.get("partial", "")
            if partial not in ("0", "1"):
                raise _HttpError(400, "partial must be 0 or 1")
            entry = query.get("ima_ml_entry", "0")
            if not entry.isdigit():
                raise _HttpError(400, "ima_ml_entry must be a non-negative integer")
            start = int(entry)
        quote = self.tpm.quote(nonce.encode("ascii"), pcrs, self._pubkey.encode("ascii"))
        self.quotes += 1
        if self.reset_count is not None and quote.reset_count != self.reset_count:
            # The verifier sees it too (the quote's clock info); said here for the operator.
            _log.warning(
                "the TPM was reset since the last quote (reset count %d, now %d): PCR 10 "
                "no longer matches a log kept across the reset",
                self.reset_count,
                quote.reset_count,
            )
        self.reset_count = quote.reset_count
        results: dict[str, Any] = {
            "quote": quote.text,
            "hash_alg": self.tpm.bank,
            "enc_alg": self._enc_alg(version),
            "sign_alg": _SIGN_ALG,
        }
        if partial == "0":
            results["pubkey"] = self._pubkey
        if integrity:
            # Read after the quote: the list then covers everything the quoted PCR does.
            ima = self.ima.read(start)
            results["ima_measurement_list"] = ima.text
            results["ima_measurement_list_entry"] = ima.start
        return results

    def _key_half(self, which: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("payload"):
            raise _HttpError(400, "imaguard's agent does not take payloads")
        encrypted = body.get("encrypted_key")
        if not isinstance(encrypted, str):
            raise _HttpError(400, "encrypted_key is required")
        try:
            half = self.identity.key.decrypt(
                base64.b64decode(encrypted, validate=True),
                OAEP(mgf=MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None),  # noqa: S303
            )
        except ValueError:
            raise _HttpError(400, "encrypted_key does not decrypt with the agent's key") from None
        with self._keys_lock:
            if which == "u":
                tag = body.get("auth_tag")
                if not isinstance(tag, str):
                    raise _HttpError(400, "auth_tag is required with the U key")
                self._u, self._auth_tag = half, tag
            else:
                self._v = half
            self._derive()
        return {}

    def _derive(self) -> None:
        if self._u is None or self._v is None or self._auth_tag is None:
            return
        if len(self._u) != len(self._v):
            _log.error("the U and V keys differ in length; both dropped")
            self._u = self._v = None
            return
        k = _xor(self._u, self._v)
        expected = hmac.new(k, self.config.uuid.encode(), hashlib.sha384).hexdigest()
        if hmac.compare_digest(expected, self._auth_tag):
            self._k = k
            _log.info("bootstrap key derived")
        else:
            _log.error("the U and V keys do not make the key the tenant tagged; both dropped")
            self._u = self._v = None

    def _verify(self, query: dict[str, str]) -> dict[str, Any]:
        challenge = query.get("challenge", "")
        if not _ALNUM.match(challenge):
            raise _HttpError(400, "challenge must be letters and digits")
        with self._keys_lock:
            k = self._k
        if k is None:
            raise _HttpError(400, "the bootstrap key is not derived yet")
        return {"hmac": hmac.new(k, challenge.encode(), hashlib.sha384).hexdigest()}
