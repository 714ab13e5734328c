"""Helpers for the service unit tests: config files written into tmp_path; a control
server every uid can reach, and raw frames to and from it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imaguard.service import ControlServer
from imaguard.service._protocol import parse_body


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write ``text`` (with ``{tmp}`` replaced by tmp_path) to tmp_path/imaguard.toml."""

    def write(text: str) -> Path:
        path = tmp_path / "imaguard.toml"
        path.write_text(text.replace("{tmp}", str(tmp_path)))
        return path

    return write


MINIMAL = """
watch = ["{tmp}"]
[[policy]]
name = "exec-guard"
rules = "measure func=BPRM_CHECK"
"""


@contextlib.contextmanager
def public_server(handler: Any, **options: Any) -> Iterator[ControlServer]:
    """A started ControlServer whose socket every uid can reach (pytest's tmp_path is 0700:
    a directory under /run when root), stopped and removed afterwards."""
    base = "/run" if os.geteuid() == 0 and os.path.isdir("/run") else None
    run = Path(tempfile.mkdtemp(prefix="imaguard-test-", dir=base))
    run.chmod(0o755)
    srv = ControlServer(str(run / "c.sock"), handler, mode=0o666, **options)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()
        shutil.rmtree(run, ignore_errors=True)


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def read_frame(s: socket.socket) -> dict[str, object]:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return parse_body(body)
