"""The status document, the control socket and ``imaguard status``."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.clirun import run_in_process
from imaguard.errors import BackendError
from imaguard.service import (
    STATUS_KEYS,
    ControlServer,
    Peer,
    Reply,
    query_status,
    status_document,
)


@dataclass(frozen=True)
class FakeStats:
    allowed: int = 7
    denied: int = 2
    queue: int = 1
    events: int = 9
    overflow_denied: int = 0
    ignore_marks: int = 3
    cache_hits: int = 5
    cache_misses: int = 4


def test_document_shape() -> None:
    doc = status_document(
        ready=True,
        mode="permissive",
        watched=("/srv",),
        policies=[{"name": "p", "owner": "admin", "lock": "open", "version": 1}],
        stats=FakeStats(),
        pid=42,
        worker_pid=43,
    )
    assert tuple(doc)[: len(STATUS_KEYS)] == STATUS_KEYS
    assert doc["decisions"] == {"allowed": 7, "denied": 2}
    assert doc["cache"] == {"hits": 5, "misses": 4}
    assert (doc["queue"], doc["pid"], doc["worker_pid"], doc["ready"]) == (1, 42, 43, True)
    assert doc["watched"] == ["/srv"]
    assert doc["ignore_marks"] == 3
    json.dumps(doc)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ControlServer, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []

    def answer(request: dict[str, object], peer: Peer, fds: list[int]) -> Reply:
        seen.append(request)
        assert peer.pid == os.getpid()
        assert peer.uid == os.geteuid()
        assert fds == []
        return Reply(
            status_document(
                ready=True, mode="enforce", watched=["/x"], policies=[], stats=FakeStats(), pid=1
            )
        )

    srv = ControlServer(str(tmp_path / "run" / "control.sock"), answer)
    srv.start()
    yield srv, seen
    srv.close()


def test_socket_round_trip(server: tuple[ControlServer, list[dict[str, object]]]) -> None:
    srv, seen = server
    assert stat.S_IMODE(os.stat(srv.path).st_mode) == 0o600
    doc = query_status(srv.path)
    assert seen == [{"v": 1, "op": "status", "id": 1}]
    assert doc["decisions"] == {"allowed": 7, "denied": 2}


def test_cli_status_json(
    server: tuple[ControlServer, list[dict[str, object]]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_in_process(capsys, "status", "--socket", server[0].path, "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(STATUS_KEYS) <= set(doc)
    code, out, _ = run_in_process(capsys, "status", "--socket", server[0].path)
    assert code == 0
    assert "7 allowed, 2 denied" in out


def test_no_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.sock"
    with pytest.raises(BackendError):
        query_status(str(path))
    code, out, err = run_in_process(capsys, "status", "--socket", path, "--json")
    assert code == 2
    assert out == ""
    assert f"no imaguard daemon answers on {path}" in err


def test_socket_is_removed_on_close(tmp_path: Path) -> None:
    srv = ControlServer(str(tmp_path / "c.sock"), lambda _r, _p, _f: Reply({}))
    srv.start()
    srv.close()
    assert not (tmp_path / "c.sock").exists()
