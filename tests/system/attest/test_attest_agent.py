"""``imaguard.attest.Agent`` in-process: Keylime's agent API over mTLS, with swtpm.

The client here is what Keylime's verifier and tenant are to the agent: a client
certificate from the CA the agent trusts, and the agent's own certificate as the only
server certificate it trusts (``keylime/web_util.py`` ``generate_agent_tls_context``).
The whole exchange with Keylime's real verifier runs in test_attest_demo.py.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.x509.oid import NameOID

from helpers.measure import Swtpm
from imaguard.attest import Agent, Registrar, load_config
from imaguard.errors import BackendError, Error

from .conftest import make_log

UUID = "agent-under-test"


def _cert(
    name: str, key: rsa.RSAPrivateKey, issuer: x509.Certificate | None, signer: rsa.RSAPrivateKey
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    return b.sign(signer, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    data: bytes = obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


class Client:
    def __init__(self, agent: Agent, port: int, ctx: ssl.SSLContext) -> None:
        self.agent, self.port, self.ctx = agent, port, ctx

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            doc: dict[str, Any] = json.loads(resp.read())
        finally:
            conn.close()
        assert doc["code"] == resp.status
        return resp.status, doc

    def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        raw = None if body is None else json.dumps(body).encode()
        status, doc = self.call(method, path, raw)
        assert status == 200, doc
        results: dict[str, Any] = doc["results"]
        return results

    def refused(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        status, doc = self.call(method, path, raw)
        assert status != 200, doc
        return status, str(doc["status"])


@pytest.fixture
def setup(tpm: Swtpm, tmp_path: Path) -> Iterator[tuple[Client, Path, ssl.SSLContext]]:
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _cert("test CA", ca_key, None, ca_key)
    client_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client = _cert("verifier", client_key, ca, ca_key)
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    (tmp_path / "client.pem").write_bytes(_pem(client))
    (tmp_path / "client-key.pem").write_bytes(_pem(client_key))
    state = tmp_path / "state"
    programs = []
    for name in ("one", "two"):
        p = tmp_path / name
        p.write_text(name)
        programs.append(p)
    make_log(state, tpm, programs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'uuid = "{UUID}"\nregistrar = "127.0.0.1:1"\nlisten = "127.0.0.1:{port}"\n'
        f'tpm = "{tpm.tcti}"\nstate = "state"\n'
        '[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\nca = "ca.pem"\n'
    )
    agent = Agent(load_config(conf))
    try:
        host, bound = agent.start()
        assert (host, bound) == ("127.0.0.1", port)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "tls" / "cert.pem"))
        ctx.check_hostname = False
        ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client-key.pem")
        yield Client(agent, port, ctx), tmp_path, ctx
    finally:
        agent.close()


def test_version_and_identity_quote(setup: tuple[Client, Path, ssl.SSLContext]) -> None:
    c, _, _ = setup
    v = c.ok("GET", "/version")
    assert v["supported_version"] == "2.6"
    assert v["supported_versions"] == ["2.1", "2.2", "2.3", "2.4", "2.5", "2.6"]
    q = c.ok("GET", "/v2.6/quotes/identity?nonce=abc123")
    assert q["quote"].startswith("r")
    assert q["quote"].count(":") == 2
    assert (q["hash_alg"], q["enc_alg"], q["sign_alg"]) == ("sha256", "rsa2048", "rsassa")
    assert q["pubkey"] == c.agent.identity.pubkey_pem
    assert "ima_measurement_list" not in q
    assert c.ok("GET", "/v2.4/quotes/identity?nonce=abc123")["enc_alg"] == "rsa"
    assert c.ok("GET", "/v2.6/keys/pubkey") == {"pubkey": c.agent.identity.pubkey_pem}
    info = c.ok("GET", "/v2.2/agent/info")
    assert info["agent_uuid"] == UUID
    assert info["tpm_hash_alg"] == "sha256"
    assert c.refused("GET", "/v2.1/agent/info")[0] == 404


def test_integrity_quote_serves_the_log_from_the_entry_asked(
    setup: tuple[Client, Path, ssl.SSLContext], tpm: Swtpm
) -> None:
    c, tmp, _ = setup
    full = c.ok("GET", "/v2.6/quotes/integrity?nonce=n1&mask=0x400&partial=0&ima_ml_entry=0")
    lines = full["ima_measurement_list"].splitlines()
    assert full["ima_measurement_list_entry"] == 0
    assert len(lines) == 3
    assert lines[0].split()[2] == "ima-ng"
    assert lines[0].endswith(" boot_aggregate")
    assert lines[1].startswith("10 ")
    assert lines[1].endswith(str(tmp / "one"))
    assert full["pubkey"] == c.agent.identity.pubkey_pem
    part = c.ok("GET", "/v2.6/quotes/integrity?nonce=n2&mask=0x400&partial=1&ima_ml_entry=2")
    assert "pubkey" not in part
    assert part["ima_measurement_list_entry"] == 2
    assert part["ima_measurement_list"].splitlines() == lines[2:]
    beyond = c.ok("GET", "/v2.6/quotes/integrity?nonce=n3&mask=400&partial=1&ima_ml_entry=9")
    assert beyond["ima_measurement_list_entry"] == 0
    assert beyond["ima_measurement_list"].splitlines() == lines
    assert c.agent.quotes == 3


def test_a_tpm_reset_is_logged(
    setup: tuple[Client, Path, ssl.SSLContext], tpm: Swtpm, caplog: pytest.LogCaptureFixture
) -> None:
    c, _, _ = setup
    c.ok("GET", "/v2.6/quotes/identity?nonce=a1")
    tpm.reset()
    with caplog.at_level(logging.WARNING, logger="imaguard.attest"):
        c.ok("GET", "/v2.6/quotes/identity?nonce=a2")
    assert "the TPM was reset since the last quote" in caplog.text


@pytest.mark.parametrize(
    ("path", "code", "says"),
    [
        ("/v2.6/quotes/identity?nonce=a-b", 400, "nonce"),
        ("/v2.6/quotes/identity?nonce=" + "a" * 65, 400, "nonce"),
        ("/v2.6/quotes/identity", 400, "nonce"),
        ("/v2.6/quotes/integrity?nonce=a&mask=0xzz&partial=0", 400, "mask"),
        ("/v2.6/quotes/integrity?nonce=a&mask=0x400&partial=2", 400, "partial"),
        ("/v2.6/quotes/integrity?nonce=a&mask=0x400&partial=0&ima_ml_entry=-1", 400, "ima_ml"),
        ("/v3.0/quotes/identity?nonce=a", 400, "API version not supported"),
        ("/v2.6/nothing", 404, "not supported"),
        ("/nothing", 404, "no such resource"),
        ("/v2.6/keys/verify?challenge=a", 400, "not derived"),
        ("/v2.6/keys/verify?challenge=a%20b", 400, "challenge"),
    ],
)
def test_bad_requests_are_refused(
    setup: tuple[Client, Path, ssl.SSLContext], path: str, code: int, says: str
) -> None:
    c, _, _ = setup
    status, text = c.refused("GET", path)
    assert status == code
    assert says in text


def test_bad_posts_are_refused(setup: tuple[Client, Path, ssl.SSLContext]) -> None:
    c, _, _ = setup
    assert c.refused("POST", "/v2.6/quotes/identity", {})[0] == 405
    assert c.refused("POST", "/v2.6/keys/ukey", b"{not json")[1] == "body is not JSON"
    assert c.refused("POST", "/v2.6/keys/ukey", b"[1]")[1] == "body is not a JSON object"
    assert "encrypted_key" in c.refused("POST", "/v2.6/keys/vkey", {})[1]
    assert "payloads" in c.refused("POST", "/v2.6/keys/ukey", {"payload": "x"})[1]
    bad = {"encrypted_key": base64.b64encode(b"x" * 256).decode(), "auth_tag": "t"}
    assert "does not decrypt" in c.refused("POST", "/v2.6/keys/ukey", bad)[1]
    assert c.ok("POST", "/v2.6/notifications/revocation", {"type": "revocation"}) == {}


def _encrypt(agent: Agent, data: bytes) -> str:
    pub = agent.identity.key.public_key()
    ct = pub.encrypt(data, OAEP(mgf=MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))  # noqa: S303
    return base64.b64encode(ct).decode()


def test_bootstrap_key_halves_and_verify(setup: tuple[Client, Path, ssl.SSLContext]) -> None:
    """The tenant's U and V (keylime/tenant.py do_quote, do_verify): K = U xor V, tagged
    with HMAC-SHA384(K, uuid); the agent proves K with HMAC-SHA384(K, challenge)."""
    c, _, _ = setup
    k = os.urandom(32)
    u = os.urandom(32)
    v = bytes(a ^ b for a, b in zip(k, u, strict=True))
    tag = hmac.new(k, UUID.encode(), hashlib.sha384).hexdigest()
    # A wrong tag: both halves are dropped.
    c.ok("POST", "/v2.6/keys/ukey", {"encrypted_key": _encrypt(c.agent, u), "auth_tag": "0"})
    c.ok("POST", "/v2.6/keys/vkey", {"encrypted_key": _encrypt(c.agent, v)})
    assert "not derived" in c.refused("GET", "/v2.6/keys/verify?challenge=abc")[1]
    # Halves of different lengths: dropped too.
    c.ok("POST", "/v2.6/keys/ukey", {"encrypted_key": _encrypt(c.agent, u[:16]), "auth_tag": tag})
    c.ok("POST", "/v2.6/keys/vkey", {"encrypted_key": _encrypt(c.agent, v)})
    assert "not derived" in c.refused("GET", "/v2.6/keys/verify?challenge=abc")[1]
    assert (
        "auth_tag"
        in c.refused("POST", "/v2.6/keys/ukey", {"encrypted_key": _encrypt(c.agent, u)})[1]
    )
    c.ok("POST", "/v2.6/keys/vkey", {"encrypted_key": _encrypt(c.agent, v)})
    c.ok("POST", "/v2.6/keys/ukey", {"encrypted_key": _encrypt(c.agent, u), "auth_tag": tag})
    got = c.ok("GET", "/v2.6/keys/verify?challenge=abc123")
    assert got["hmac"] == hmac.new(k, b"abc123", hashlib.sha384).hexdigest()


def test_a_client_without_the_ca_certificate_is_refused(
    setup: tuple[Client, Path, ssl.SSLContext],
) -> None:
    c, tmp, _ = setup
    ctx = ssl.create_default_context(cafile=str(tmp / "tls" / "cert.pem"))
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", c.port, context=ctx, timeout=30)

    def attempt() -> None:
        conn.request("GET", "/version")
        conn.getresponse().read()

    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        attempt()
    conn.close()
    # The agent still answers a proper client afterwards.
    assert c.ok("GET", "/version")["supported_version"] == "2.6"


def test_restart_keeps_the_tls_identity_and_port_in_use_is_named(
    setup: tuple[Client, Path, ssl.SSLContext], tpm: Swtpm
) -> None:
    c, tmp, _ = setup
    config = load_config(tmp / "agent.toml")
    with Agent(config) as second:
        assert second.identity.cert_pem == c.agent.identity.cert_pem
        with pytest.raises(Error, match=r"cannot listen on 127\.0\.0\.1"):
            second.start()


def test_register_names_an_unreachable_registrar(
    setup: tuple[Client, Path, ssl.SSLContext],
) -> None:
    c, _, _ = setup
    with pytest.raises(BackendError, match=r"registrar http://127.0.0.1:1: GET /version"):
        c.agent.register()


class _Fake(BaseHTTPRequestHandler):
    """A registrar that answers each path with a canned (status, body)."""

    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        status, body = self.answers.get(self.path, (404, b'{"status": "no"}'))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_registrar() -> Iterator[tuple[Registrar, dict[str, tuple[int, bytes]]]]:
    answers: dict[str, tuple[int, bytes]] = {}
    handler = type("H", (_Fake,), {"answers": answers})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Registrar("127.0.0.1", server.server_address[1], timeout=10), answers
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_registrar_answers_are_checked(
    fake_registrar: tuple[Registrar, dict[str, tuple[int, bytes]]],
) -> None:
    reg, answers = fake_registrar
    answers["/version"] = (200, b'{"results": {"supported_versions": ["1.0", "3.0"]}}')
    with pytest.raises(BackendError, match="no common API version"):
        reg.api_version()
    answers["/version"] = (200, b'{"results": {"current_version": "2.3"}}')
    assert reg.api_version() == "2.3"
    answers["/version"] = (200, b"<html>")
    with pytest.raises(BackendError, match="not JSON"):
        reg.api_version()
    kw: dict[str, Any] = {
        "ek_tpm": b"e",
        "ekcert": None,
        "aik_tpm": b"a",
        "mtls_cert": "c",
        "ip": "127.0.0.1",
        "port": 9,
    }
    answers["/v2.6/agents/u"] = (400, b'{"status": "Could not register agent with invalid data"}')
    with pytest.raises(BackendError, match=r"HTTP 400 .*invalid data"):
        reg.register("2.6", "u", **kw)
    answers["/v2.6/agents/u"] = (200, b'{"results": {}}')
    with pytest.raises(BackendError, match="no credential blob"):
        reg.register("2.6", "u", **kw)
    answers["/v2.6/agents/u"] = (200, b'{"results": {"blob": "***"}}')
    with pytest.raises(BackendError, match="not Base64"):
        reg.register("2.6", "u", **kw)
    answers["/v2.6/agents/u"] = (200, b'{"results": {"blob": "YWJj"}}')
    assert reg.register("2.6", "u", **kw) == b"abc"
    answers["/v2.6/agents/u/activate"] = (200, b"")
    reg.activate("2.6", "u", "tag")


def test_tls_identity_files_are_checked(tmp_path: Path) -> None:
    from imaguard.attest import ensure_identity, server_context
    from imaguard.errors import UsageError

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    made = ensure_identity(cert, key, "u1", "127.0.0.1")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = ensure_identity(cert, key, "u1", "127.0.0.1")
    assert again.cert_pem == made.cert_pem
    names = made.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    by_name = ensure_identity(tmp_path / "c2.pem", tmp_path / "k2.pem", "u1", "agent.example")
    alt = by_name.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "agent.example" in alt.get_values_for_type(x509.DNSName)
    with pytest.raises(UsageError, match="give both or neither"):
        ensure_identity(tmp_path / "none.pem", key, "u1", "127.0.0.1")
    other = tmp_path / "other-key.pem"
    other.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    with pytest.raises(UsageError, match="not the key in"):
        ensure_identity(cert, other, "u1", "127.0.0.1")
    eck = tmp_path / "ec-key.pem"
    eck.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(UsageError, match="must be an RSA key"):
        ensure_identity(cert, eck, "u1", "127.0.0.1")
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    with pytest.raises(UsageError, match="not a PEM private key"):
        ensure_identity(cert, junk, "u1", "127.0.0.1")
    with pytest.raises(UsageError, match="not a PEM certificate"):
        ensure_identity(junk, key, "u1", "127.0.0.1")
    with pytest.raises(UsageError, match="not a PEM CA certificate"):
        server_context(cert, key, junk)
    with pytest.raises(UsageError, match="cannot be used for TLS"):
        server_context(junk, key, cert)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(UsageError, match="cannot write the agent's TLS files"):
        ensure_identity(blocked / "c.pem", blocked / "k.pem", "u1", "127.0.0.1")
