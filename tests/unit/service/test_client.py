"""``imaguard.Client`` (docs/protocol.md): reading a policy and its signature, the requests
it sends, refusals as ServiceError, a missing daemon as BackendError, Verdicts from JSON."""

from __future__ import annotations

import base64
import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import imaguard
from helpers.core import IMA
from imaguard import Status, Verdict
from imaguard.errors import BackendError, FileError, ServiceError, StoreError, UsageError
from imaguard.service import Client, ControlServer, Peer, ProtocolError, Reply
from imaguard.service._client import _policy, verdict_from_dict

Handler = Callable[[dict[str, Any], Peer, list[int]], Reply]

# --------------------------------------------------------------------------------------
# _policy: the text, where it came from, and its signature
# --------------------------------------------------------------------------------------

TEXT = "#@ version 3\nmeasure func=FILE_CHECK\n"


def test_policy_from_a_path(tmp_path: Path) -> None:
    p = tmp_path / "p.policy"
    p.write_text(TEXT)
    assert _policy(p, None) == (TEXT, str(p), None)
    assert _policy(str(p), None) == (TEXT, str(p), None)


def test_policy_from_bytes() -> None:
    assert _policy(TEXT.encode(), None) == (TEXT, None, None)
    assert _policy("é\n".encode(), None) == ("é\n", None, None)


def test_policy_must_be_utf8(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as e:
        _policy(b"measure \xff\n", None)
    assert "not UTF-8" in str(e.value)
    assert "byte 8" in str(e.value)
    p = tmp_path / "latin1.policy"
    p.write_bytes(b"# caf\xe9\nmeasure\n")
    with pytest.raises(UsageError) as e:
        _policy(p, None)
    assert str(p) in str(e.value)


def test_policy_file_missing(tmp_path: Path) -> None:
    with pytest.raises(FileError) as e:
        _policy(tmp_path / "gone.policy", None)
    assert e.value.path == str(tmp_path / "gone.policy")


def test_signature_given_as_bytes_or_a_file(tmp_path: Path) -> None:
    p = tmp_path / "p.policy"
    p.write_text(TEXT)
    value = b"\x03\x02\x04\x01\x02\x03\x04\x00\x02\xaa\xbb"
    assert _policy(p, value)[2] == base64.b64encode(value).decode()
    sig = tmp_path / "p.sig-value"
    sig.write_bytes(value)
    assert _policy(p, sig)[2] == base64.b64encode(value).decode()
    assert _policy(TEXT.encode(), str(sig))[2] == base64.b64encode(value).decode()
    with pytest.raises(FileError) as e:
        _policy(p, tmp_path / "no-such-signature")
    assert str(tmp_path / "no-such-signature") in str(e.value)


def test_a_signed_policy_file_sends_its_stored_value(
    tmp_path: Path, ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring
) -> None:
    p = tmp_path / "signed.policy"
    p.write_text(TEXT)
    try:
        imaguard.sign_file(p, ec_key)
    except StoreError as e:
        pytest.skip(f"this filesystem keeps no {IMA} here: {e}")
    stored = os.getxattr(p, IMA)
    assert _policy(p, None) == (TEXT, str(p), base64.b64encode(stored).decode())
    # what is sent verifies over exactly the text sent (what the daemon checks)
    assert imaguard.appraise(TEXT.encode(), ec_ring, value=stored).passed
    assert _policy(p, None, read_signature=False)[2] is None
    assert _policy(p, b"\x03explicit")[2] == base64.b64encode(b"\x03explicit").decode()


def test_a_policy_file_with_a_sig_sidecar_sends_it(
    tmp_path: Path, ec_key: imaguard.PrivateKey
) -> None:
    # Client.load/replace and `ctl --signature`: the file's own security.ima, or the .sig
    p = tmp_path / "sidecar.policy"
    p.write_text(TEXT)
    imaguard.sign_file(p, ec_key, store="sigfile")
    value = (tmp_path / "sidecar.policy.sig").read_bytes()
    assert _policy(p, None)[2] == base64.b64encode(value).decode()
    assert _policy(p, None, read_signature=False)[2] is None


def test_an_unsigned_policy_file_sends_no_signature(tmp_path: Path) -> None:
    p = tmp_path / "plain.policy"
    p.write_text(TEXT)
    assert _policy(p, None)[2] is None


# --------------------------------------------------------------------------------------
# verdict_from_dict
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "verdict",
    [
        Verdict(
            "/usr/bin/x",
            Status.PASS,
            None,
            0x1234ABCD,
            "sha256",
            0x03,
            bytes(range(32)),
            "signed by 1234abcd",
            "CN=test",
        ),
        Verdict("/x", Status.FAIL, "invalid-signature", 0xDEADBEEF, "sha512", 0x03, b"\x01" * 64),
        Verdict("/x", Status.NO_XATTR, "IMA-signature-required"),
        Verdict("", Status.UNKNOWN_KEY, None, 0, "sha1", 0x03, None, "", None),
        Verdict("/y", Status.UNKNOWN, None, None, None, None, None, "no xattr support"),
    ],
)
def test_verdict_round_trips(verdict: Verdict) -> None:
    assert verdict_from_dict(verdict.to_dict()) == verdict


def test_a_real_verdict_round_trips(ec_key: imaguard.PrivateKey, ec_ring: imaguard.Keyring) -> None:
    data = b"some bytes\n"
    value = imaguard.sign_bytes(data, ec_key).serialize()
    good = imaguard.appraise(data, ec_ring, value=value)
    bad = imaguard.appraise(data + b"!", ec_ring, value=value)
    assert good.passed
    assert not bad.passed
    for v in (good, bad):
        assert verdict_from_dict(v.to_dict()) == v


# --------------------------------------------------------------------------------------
# The Client against a server
# --------------------------------------------------------------------------------------


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ControlServer]]:
    servers: list[ControlServer] = []

    def make(handler: Handler, **kw: Any) -> ControlServer:
        srv = ControlServer(str(tmp_path / f"c{len(servers)}.sock"), handler, **kw)
        srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv._stop.set()
        with contextlib.suppress(OSError):
            srv._sock.shutdown(socket.SHUT_RDWR)  # close() alone waits out accept's 0.5 s
        srv.close()


class Recorder:
    """A handler that records requests (and the inodes of passed fds) and answers them."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.inodes: list[int] = []
        self.refuse: dict[str, ProtocolError] = {}
        self.results: dict[str, dict[str, Any]] = {}

    def __call__(self, request: dict[str, Any], peer: Peer, fds: list[int]) -> Reply:
        self.requests.append(request)
        self.inodes.extend(os.fstat(fd).st_ino for fd in fds)
        op = request["op"]
        if op in self.refuse:
            raise self.refuse[op]
        return Reply(self.results.get(op, {"op": op}))


def test_no_daemon_is_a_backend_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    with Client(path) as c, pytest.raises(BackendError) as e:
        c.status()
    assert not isinstance(e.value, ServiceError)
    assert str(path) in str(e.value)
    assert "no imaguard daemon answers" in str(e.value)


def test_the_socket_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGUARD_SOCKET", "/run/elsewhere.sock")
    assert Client().path == "/run/elsewhere.sock"
    monkeypatch.delenv("IMAGUARD_SOCKET")
    assert Client().path == "/run/imaguard/control.sock"
    assert Client(Path("/x/y.sock")).path == "/x/y.sock"


def test_a_refusal_is_a_service_error_with_its_code(
    serve: Callable[..., ControlServer],
) -> None:
    rec = Recorder()
    rec.refuse["seal"] = ProtocolError("locked", "p: already sealed")
    srv = serve(rec)
    with Client(srv.path) as c:
        with pytest.raises(ServiceError) as e:
            c.seal("p")
        assert e.value.code == "locked"
        assert isinstance(e.value, BackendError)
        assert "p: already sealed" in str(e.value)
        assert "[locked]" in str(e.value)
        assert c.remove("p") == {"op": "remove"}  # the connection is kept
    assert [r["op"] for r in rec.requests] == ["seal", "remove"]
    assert [r["id"] for r in rec.requests] == [1, 2]


def test_busy_closes_the_client_and_it_reconnects(
    serve: Callable[..., ControlServer],
) -> None:
    srv = serve(Recorder(), max_clients=1)
    with Client(srv.path) as first:
        first.status()
        with Client(srv.path) as second:
            with pytest.raises(BackendError) as e:
                second.status()
            # ServiceError "busy" when the request went out before the daemon closed; a
            # plain BackendError ("hung up") when it did not (see the xfail below)
            if isinstance(e.value, ServiceError):
                assert e.value.code == "busy"
            assert second._sock is None  # closed: the daemon hung up
    codes: list[str] = []
    with Client(srv.path) as third:
        deadline = time.monotonic() + 3
        answer: dict[str, Any] = {}
        while not answer and time.monotonic() < deadline:
            try:
                answer = third.status()
            except ServiceError as e:  # the first client's slot is not released yet
                codes.append(e.code)
                time.sleep(0.02)
    assert answer == {"op": "status"}
    assert set(codes) <= {"busy"}


def test_busy_is_reported_when_the_daemon_closed_first(
    serve: Callable[..., ControlServer],
) -> None:
    srv = serve(Recorder(), max_clients=1)
    with Client(srv.path) as first:
        first.status()
        with Client(srv.path) as second:
            s = second._connect()
            p = select.poll()
            p.register(s, select.POLLIN | select.POLLRDHUP)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # the busy answer is in and the daemon closed
                if any(ev & select.POLLRDHUP for _, ev in p.poll(50)):
                    break
            with pytest.raises(ServiceError) as e:
                second.status()
            assert e.value.code == "busy"


def test_a_daemon_that_does_not_answer_is_a_backend_error(
    serve: Callable[..., ControlServer],
) -> None:
    release = threading.Event()

    def slow(request: dict[str, Any], peer: Peer, fds: list[int]) -> Reply:
        release.wait(5)
        return Reply({})

    srv = serve(slow)
    try:
        with Client(srv.path, timeout=0.2) as c:
            start = time.monotonic()
            with pytest.raises(BackendError) as e:
                c.status()
            assert time.monotonic() - start < 2
            assert "no answer to status" in str(e.value)
            assert not isinstance(e.value, ServiceError)
    finally:
        release.set()


def test_requests_carry_the_documented_parameters(
    serve: Callable[..., ControlServer], tmp_path: Path
) -> None:
    rec = Recorder()
    rec.results["policies"] = {"policies": [{"name": "a"}, {"name": "b"}]}
    srv = serve(rec)
    p = tmp_path / "p.policy"
    p.write_text(TEXT)
    with Client(srv.path) as c:
        c.load("a", TEXT.encode(), lock="append-only", version=4, owner="ops")
        c.replace("a", p, version=5, signature=b"\x03sig")
        c.append("a", p)
        c.show("a")
        assert c.policies() == [{"name": "a"}, {"name": "b"}]
        c.whoami()
    load, replace, append, show, _, _ = rec.requests
    assert load == {
        "v": 1,
        "op": "load",
        "id": 1,
        "name": "a",
        "text": TEXT,
        "lock": "append-only",
        "version": 4,
        "signature": None,
        "owner": "ops",
        "source": None,
    }
    assert (replace["text"], replace["source"], replace["version"]) == (TEXT, str(p), 5)
    assert replace["signature"] == base64.b64encode(b"\x03sig").decode()
    assert (append["op"], append["text"], append["source"]) == ("append", TEXT, str(p))
    assert "signature" not in append
    assert (show["op"], show["name"]) == ("show", "a")


def test_file_calls_pass_the_descriptor(
    serve: Callable[..., ControlServer], tmp_path: Path
) -> None:
    rec = Recorder()
    rec.results["appraise"] = Verdict("ignored", Status.NO_XATTR, "missing-hash").to_dict()
    srv = serve(rec)
    f = tmp_path / "prog"
    f.write_bytes(b"#!/bin/sh\n")
    ino = f.stat().st_ino
    with Client(srv.path) as c:
        c.explain(f, "FILE_CHECK", "MAY_READ")
        verdict = c.appraise(str(f), require="digest")
        c.signature_info(f)
        fd = os.open(f, os.O_RDONLY)
        try:
            c.explain(fd)
            os.fstat(fd)  # the caller's own descriptor stays open
        finally:
            os.close(fd)
    assert rec.inodes == [ino, ino, ino, ino]
    explain, appraise, info, by_fd = rec.requests
    assert (explain["path"], explain["hook"], explain["mask"]) == (str(f), "FILE_CHECK", "MAY_READ")
    assert (appraise["path"], appraise["require"]) == (str(f), "digest")
    assert info["path"] == str(f)
    assert (by_fd["path"], by_fd["hook"], by_fd["mask"]) == (str(f), "BPRM_CHECK", None)
    assert verdict == Verdict("ignored", Status.NO_XATTR, "missing-hash")


def test_a_missing_file_is_not_sent(serve: Callable[..., ControlServer], tmp_path: Path) -> None:
    rec = Recorder()
    srv = serve(rec)
    with Client(srv.path) as c, pytest.raises(FileError):
        c.appraise(tmp_path / "nope")
    assert rec.requests == []


def test_decisions_and_a_followed_stream(serve: Callable[..., ControlServer]) -> None:
    stopped = threading.Event()

    def decisions(request: dict[str, Any], peer: Peer, fds: list[int]) -> Reply:
        first = {"decisions": [{"seq": 1}, {"seq": 2}], "dropped": 3}
        if not request.get("follow"):
            return Reply(first)

        def stream() -> Iterator[dict[str, Any] | None]:
            try:
                yield {"decision": {"seq": 3}, "dropped": 4}
                yield None
                yield {"decision": {"seq": 4}, "dropped": 5}
                while True:
                    time.sleep(0.01)
                    yield None
            finally:
                stopped.set()

        return Reply(first, stream())

    srv = serve(decisions)
    with Client(srv.path) as c:
        assert list(c.decisions("plugins")) == [{"seq": 1}, {"seq": 2}]
    with Client(srv.path) as c:
        it = c.decisions(follow=True)
        got = [next(it) for _ in range(4)]
        assert got == [
            {"seq": 1, "dropped": 3},
            {"seq": 2, "dropped": 3},
            {"seq": 3, "dropped": 4},
            {"seq": 4, "dropped": 5},
        ]
    assert stopped.wait(3)
