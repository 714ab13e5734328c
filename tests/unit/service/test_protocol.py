"""The control protocol (docs/protocol.md): framing, descriptors, limits, and the server."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imaguard.service import ControlServer, Peer, ProtocolError, Reply
from imaguard.service._protocol import (
    MAX_FRAME,
    Closed,
    parse,
    recv_frame,
    send_frame,
    serialize,
)

Handler = Callable[[dict[str, Any], Peer, list[int]], Reply]
Serve = Callable[..., ControlServer]


def header(n: int) -> bytes:
    return struct.pack(">I", n)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe (read end non-blocking): the read end sees EOF only once every write end
    (ours and any passed copy) is closed."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def writer_closed_everywhere(r: int, timeout: float = 2.0) -> bool:
    """True once the pipe's read end reads EOF (no write end left open anywhere)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.read(r, 1) == b""
        except BlockingIOError:
            time.sleep(0.01)
    return False


# --------------------------------------------------------------------------------------
# serialize / parse
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        {"v": 1, "op": "status", "id": 7},
        {"text": "appraise func=BPRM_CHECK\n", "nested": {"a": [1, 2.5, None, True]}},
        {"name": "plügins-✓", "msg": "日本語 🚀", "esc": 'quote " back \\ nl \n'},
    ],
)
def test_serialize_parse_round_trip(obj: dict[str, Any]) -> None:
    frame = serialize(obj)
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - 4
    assert parse(frame) == obj


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (header(0), "out of range"),
        (header(MAX_FRAME + 1) + b"{}", "out of range"),
        (header(10) + b"{}", "the length says 10"),
        (header(2) + b"{}   ", "the length says 2"),
        (header(5) + b"{nope", "not UTF-8 JSON"),
        (header(3) + b"[1]", "must be a JSON object"),
        (header(2) + b'"x', "not UTF-8 JSON"),
        (header(4) + b'"\xff\xfe"', "not UTF-8 JSON"),
        (b"\x00\x00", "4-byte length"),
    ],
)
def test_parse_refuses_bad_frames(frame: bytes, words: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse(frame)
    assert e.value.code == "bad-frame"
    assert words in e.value.message


def test_parse_accepts_the_largest_frame() -> None:
    body = b'{"x":"' + b"a" * (MAX_FRAME - 8) + b'"}'
    assert len(body) == MAX_FRAME
    assert parse(header(MAX_FRAME) + body) == {"x": "a" * (MAX_FRAME - 8)}


def test_serialize_refuses_a_body_over_one_mib() -> None:
    with pytest.raises(ProtocolError) as e:
        serialize({"x": "a" * MAX_FRAME})
    assert e.value.code == "bad-frame"


# --------------------------------------------------------------------------------------
# recv_frame over a socketpair
# --------------------------------------------------------------------------------------


def test_recv_a_whole_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send_frame(a, {"v": 1, "op": "whoami"})
    send_frame(a, {"v": 1, "op": "status"})
    assert recv_frame(b, idle=2) == ({"v": 1, "op": "whoami"}, [])
    assert recv_frame(b, idle=2) == ({"v": 1, "op": "status"}, [])


def test_recv_a_frame_split_across_many_sends(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    obj = {"v": 1, "op": "show", "name": "plügins", "pad": "x" * 40}
    data = serialize(obj)
    pieces = [data[i : i + 1] for i in range(6)] + [data[6:20], data[20:]]

    def dribble() -> None:
        for p in pieces:
            a.sendall(p)
            time.sleep(0.005)

    t = threading.Thread(target=dribble)
    t.start()
    try:
        got, fds = recv_frame(b, idle=2, frame_timeout=2)
    finally:
        t.join()
    assert (got, fds) == (obj, [])


def test_an_fd_passed_with_a_frame_is_the_same_file(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    a, b = pair
    f = tmp_path / "passed"
    f.write_bytes(b"hello")
    fd = os.open(f, os.O_RDONLY)
    try:
        send_frame(a, {"v": 1, "op": "appraise"}, (fd,))
        got, fds = recv_frame(b, idle=2)
    finally:
        os.close(fd)
    try:
        assert got == {"v": 1, "op": "appraise"}
        assert len(fds) == 1
        assert fds[0] != fd
        assert os.fstat(fds[0]).st_ino == f.stat().st_ino
        assert os.pread(fds[0], 5, 0) == b"hello"
    finally:
        for x in fds:
            os.close(x)


def test_closed_on_clean_eof(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    with pytest.raises(Closed):
        recv_frame(b, idle=2)


@pytest.mark.parametrize("cut", [2, 4 + 3])
def test_eof_inside_a_frame_is_bad_frame(
    pair: tuple[socket.socket, socket.socket], cut: int
) -> None:
    a, b = pair
    a.sendall(serialize({"v": 1, "op": "status"})[:cut])
    a.close()
    with pytest.raises(ProtocolError) as e:
        recv_frame(b, idle=2, frame_timeout=2)
    assert e.value.code == "bad-frame"


def test_timeout_when_the_body_never_completes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.sendall(serialize({"v": 1, "op": "status"})[:9])
    start = time.monotonic()
    with pytest.raises(ProtocolError) as e:
        recv_frame(b, idle=2, frame_timeout=0.2)
    elapsed = time.monotonic() - start
    assert e.value.code == "timeout"
    assert 0.15 <= elapsed < 2


def test_idle_is_a_plain_timeout_error(pair: tuple[socket.socket, socket.socket]) -> None:
    _, b = pair
    start = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        recv_frame(b, idle=0.1)
    assert not isinstance(e.value, ProtocolError)
    assert time.monotonic() - start < 2


def test_a_huge_length_is_refused_without_waiting_for_the_body(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.sendall(header(1 << 30))
    start = time.monotonic()
    with pytest.raises(ProtocolError) as e:
        recv_frame(b, idle=2, frame_timeout=5)
    assert e.value.code == "bad-frame"
    assert time.monotonic() - start < 1


def _send_raw_with_fd(sock: socket.socket, data: bytes, fd: int) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
    assert sock.sendmsg([data], anc) == len(data)


def test_fds_are_closed_when_the_frame_is_bad(
    pair: tuple[socket.socket, socket.socket], pipe: tuple[int, int]
) -> None:
    a, b = pair
    r, w = pipe
    _send_raw_with_fd(a, header(5) + b"{nope", w)
    os.close(w)
    with pytest.raises(ProtocolError) as e:
        recv_frame(b, idle=2)
    assert e.value.code == "bad-frame"
    assert writer_closed_everywhere(r)


def test_fds_are_closed_when_the_frame_times_out(
    pair: tuple[socket.socket, socket.socket], pipe: tuple[int, int]
) -> None:
    a, b = pair
    r, w = pipe
    _send_raw_with_fd(a, serialize({"v": 1})[:6], w)
    os.close(w)
    with pytest.raises(ProtocolError) as e:
        recv_frame(b, idle=2, frame_timeout=0.2)
    assert e.value.code == "timeout"
    assert writer_closed_everywhere(r)


def test_a_good_frame_hands_its_fds_to_the_caller(
    pair: tuple[socket.socket, socket.socket], pipe: tuple[int, int]
) -> None:
    a, b = pair
    r, w = pipe
    send_frame(a, {"v": 1}, (w,))
    os.close(w)
    _, fds = recv_frame(b, idle=2)
    assert len(fds) == 1
    assert not writer_closed_everywhere(r, timeout=0.05)  # the caller holds it open
    os.close(fds[0])
    assert writer_closed_everywhere(r)


# --------------------------------------------------------------------------------------
# The server, with trivial handlers
# --------------------------------------------------------------------------------------


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    servers: list[ControlServer] = []

    def make(handler: Handler, **kw: Any) -> ControlServer:
        srv = ControlServer(str(tmp_path / f"s{len(servers)}.sock"), handler, **kw)
        srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        stop(srv)


def stop(srv: ControlServer) -> None:
    """Close a server at once (``close`` alone waits out the accept loop's 0.5 s poll)."""
    srv._stop.set()
    with contextlib.suppress(OSError):
        srv._sock.shutdown(socket.SHUT_RDWR)
    srv.close()


def echo(request: dict[str, Any], peer: Peer, fds: list[int]) -> Reply:
    """Answers ``echo`` with the request; anything else is ``unknown-op``."""
    if request.get("op") != "echo":
        raise ProtocolError("unknown-op", f"unknown op {request.get('op')!r}")
    return Reply({"request": request, "pid": peer.pid, "fds": len(fds)})


@contextlib.contextmanager
def connect(path: str) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    try:
        yield s
    finally:
        s.close()


def ask(s: socket.socket, obj: dict[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any]:
    send_frame(s, obj, fds)
    answer, got = recv_frame(s, idle=5, frame_timeout=5)
    assert got == []
    return answer


def test_an_answer_names_the_peer(serve: Serve) -> None:
    srv = serve(echo)
    with connect(srv.path) as s:
        answer = ask(s, {"v": 1, "op": "echo", "id": 1})
    assert answer["ok"] is True
    assert answer["v"] == 1
    assert answer["result"]["pid"] == os.getpid()


def test_bad_version_keeps_the_connection(serve: Serve) -> None:
    srv = serve(echo)
    with connect(srv.path) as s:
        for bad in ({"v": 2, "op": "echo", "id": 5}, {"op": "echo", "id": 5}):
            answer = ask(s, bad)
            assert answer["ok"] is False
            assert answer["error"]["code"] == "bad-version"
            assert answer["versions"] == [1]
            assert answer["id"] == 5
        assert ask(s, {"v": 1, "op": "echo"})["ok"] is True


def test_unknown_op_keeps_the_connection(serve: Serve) -> None:
    srv = serve(echo)
    with connect(srv.path) as s:
        answer = ask(s, {"v": 1, "op": "frobnicate", "id": "a"})
        assert answer == {
            "v": 1,
            "ok": False,
            "id": "a",
            "error": {"code": "unknown-op", "message": "unknown op 'frobnicate'"},
        }
        assert ask(s, {"v": 1, "op": "echo"})["ok"] is True


def test_a_handler_crash_is_internal_and_keeps_the_connection(serve: Serve) -> None:
    def crash(request: dict[str, Any], peer: Peer, fds: list[int]) -> Reply:
        if request["op"] == "crash":
            raise RuntimeError("boom")
        return Reply({"fine": True})

    srv = serve(crash)
    with connect(srv.path) as s:
        answer = ask(s, {"v": 1, "op": "crash", "id": 3})
        assert answer["error"]["code"] == "internal"
        assert "boom" in answer["error"]["message"]
        assert answer["id"] == 3
        assert ask(s, {"v": 1, "op": "ok"})["result"] == {"fine": True}


@pytest.mark.parametrize("body", [b"{nope", b"[1, 2]", b'"\xff"'])
def test_bad_frame_closes_the_connection(serve: Serve, body: bytes) -> None:
    srv = serve(echo)
    with connect(srv.path) as s:
        s.sendall(header(len(body)) + body)
        answer, _ = recv_frame(s, idle=5)
        assert answer["ok"] is False
        assert answer["error"]["code"] == "bad-frame"
        assert "id" not in answer
        with pytest.raises(Closed):
            recv_frame(s, idle=5)


def test_a_one_gib_header_is_refused_without_reading(serve: Serve) -> None:
    srv = serve(echo, frame_timeout=5)
    with connect(srv.path) as s:
        start = time.monotonic()
        s.sendall(header(1 << 30))
        answer, _ = recv_frame(s, idle=5)
        assert time.monotonic() - start < 2  # not the 5 s a body would be waited for
        assert answer["error"]["code"] == "bad-frame"
        assert str(1 << 30) in answer["error"]["message"]
        with pytest.raises(Closed):
            recv_frame(s, idle=5)


def test_max_clients_answers_busy(serve: Serve) -> None:
    srv = serve(echo, max_clients=1)
    with connect(srv.path) as first:
        assert ask(first, {"v": 1, "op": "echo"})["ok"] is True  # first holds the one slot
        with connect(srv.path) as second:
            refused, _ = recv_frame(second, idle=5)
            assert refused["ok"] is False
            assert refused["error"]["code"] == "busy"
            with pytest.raises(Closed):
                recv_frame(second, idle=5)
    # the slot comes back once the first client has gone
    deadline = time.monotonic() + 3
    answer: dict[str, Any] = {}
    while not answer.get("ok") and time.monotonic() < deadline:
        with connect(srv.path) as third:
            try:
                answer = ask(third, {"v": 1, "op": "echo"})
            except OSError:  # answered busy and closed before the request went out
                answer, _ = recv_frame(third, idle=5)
        if not answer["ok"]:
            assert answer["error"]["code"] == "busy"
            time.sleep(0.02)
    assert answer["ok"] is True


def test_a_stalled_client_does_not_block_another(serve: Serve) -> None:
    srv = serve(echo, frame_timeout=1.0)
    with connect(srv.path) as stalled:
        stalled.sendall(serialize({"v": 1, "op": "echo"})[:8])  # half a frame
        time.sleep(0.05)
        with connect(srv.path) as other:
            start = time.monotonic()
            assert ask(other, {"v": 1, "op": "echo"})["ok"] is True
            assert time.monotonic() - start < 0.5
        answer, _ = recv_frame(stalled, idle=5)
        assert answer["error"]["code"] == "timeout"
        with pytest.raises(Closed):
            recv_frame(stalled, idle=5)


def test_an_idle_connection_is_closed_without_an_answer(serve: Serve) -> None:
    srv = serve(echo, idle_timeout=0.2)
    with connect(srv.path) as s:
        assert ask(s, {"v": 1, "op": "echo"})["ok"] is True
        with pytest.raises(Closed):
            recv_frame(s, idle=5)


@pytest.mark.parametrize("rid", [7, "seven", {"k": [1, 2]}, [None, True], 0, ""])
def test_the_id_is_echoed(serve: Serve, rid: Any) -> None:
    srv = serve(echo)
    with connect(srv.path) as s:
        assert ask(s, {"v": 1, "op": "echo", "id": rid})["id"] == rid
        assert ask(s, {"v": 1, "op": "nope", "id": rid})["id"] == rid


def test_no_id_no_id_in_the_answer(serve: Serve) -> None:
    srv = serve(echo)
    with connect(srv.path) as s:
        assert "id" not in ask(s, {"v": 1, "op": "echo"})
        assert "id" not in ask(s, {"v": 1, "op": "nope"})


def test_a_streaming_reply_runs_until_the_client_closes(serve: Serve) -> None:
    closed = threading.Event()

    def follow(request: dict[str, Any], peer: Peer, fds: list[int]) -> Reply:
        def stream() -> Iterator[dict[str, Any] | None]:
            try:
                n = 0
                while True:
                    n += 1
                    yield {"tick": n}
                    yield None  # a heartbeat: not sent
                    time.sleep(0.01)
            finally:
                closed.set()

        return Reply({"following": True}, stream())

    srv = serve(follow)
    with connect(srv.path) as s:
        first = ask(s, {"v": 1, "op": "follow", "id": 1})
        assert first == {"v": 1, "ok": True, "id": 1, "result": {"following": True}}
        ticks = [recv_frame(s, idle=5)[0] for _ in range(3)]
        assert ticks == [{"v": 1, "ok": True, "tick": n} for n in (1, 2, 3)]
        assert not closed.is_set()
    assert closed.wait(3), "the stream was not closed after the client left"


def test_fds_reach_the_handler_and_are_closed_after(
    serve: Serve, tmp_path: Path, pipe: tuple[int, int]
) -> None:
    seen: list[tuple[int, int]] = []
    f = tmp_path / "file"
    f.write_bytes(b"x")

    def look(request: dict[str, Any], peer: Peer, fds: list[int]) -> Reply:
        seen.extend((fd, os.fstat(fd).st_ino) for fd in fds)
        return Reply({"n": len(fds)})

    srv = serve(look)
    r, w = pipe
    fd = os.open(f, os.O_RDONLY)
    with connect(srv.path) as s:
        assert ask(s, {"v": 1, "op": "x"}, (fd,))["result"] == {"n": 1}
        os.close(fd)
        assert seen[0][1] == f.stat().st_ino
        # a pipe's write end: once the answer is in, the server holds no copy
        assert ask(s, {"v": 1, "op": "x"}, (w,))["result"] == {"n": 1}
        os.close(w)
        assert writer_closed_everywhere(r)
        assert ask(s, {"v": 1, "op": "x"})["result"] == {"n": 0}


def test_fds_are_closed_after_a_refusal_too(serve: Serve, pipe: tuple[int, int]) -> None:
    srv = serve(echo)
    r, w = pipe
    with connect(srv.path) as s:
        assert ask(s, {"v": 1, "op": "nope"}, (w,))["error"]["code"] == "unknown-op"
        os.close(w)
        assert writer_closed_everywhere(r)


def test_the_socket_mode_is_applied(serve: Serve) -> None:
    srv = serve(echo, mode=0o666)
    assert os.stat(srv.path).st_mode & 0o777 == 0o666
