"""Helpers for the integrity-core tests: policies on disk, files, the imaguard command.

Signatures go to the default store: ``security.ima`` as root, ``user.ima`` otherwise (both
need a filesystem with xattrs; user.* works on tmpfs since Linux 6.6). Every child process
has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import imaguard
from helpers import IS_ROOT

IMAGUARD = Path(sys.executable).with_name("imaguard")
TIMEOUT = 60
"""Seconds any one child process may take."""

CONTENT = b"#!/bin/sh\necho integrity-core\n"
EVIL = b"#!/bin/sh\necho owned-by-evil!\n"
assert len(CONTENT) == len(EVIL)

IMA = "security.ima" if IS_ROOT else "user.ima"
"""Where the default signature store keeps values: security.ima as root, user.ima otherwise
(imaguard's own default), so a test that only needs *a* store runs unprivileged too."""
EVM = "security.evm"


def xattr(path: str | os.PathLike[str], name: str = IMA) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError:
        return None


def drop_xattr(path: str | os.PathLike[str], name: str = IMA) -> None:
    with contextlib.suppress(OSError):
        os.removexattr(path, name)


def write_policy(directory: Path, name: str, text: str) -> Path:
    p = directory / f"{name}.policy"
    p.write_text(text)
    return p


def edit_in_place_keep_mtime(path: str | os.PathLike[str], new: bytes) -> None:
    """Rewrite a file's bytes in place (same inode, same size) and put its mtime back."""
    st = os.stat(path)
    assert st.st_size == len(new)
    with open(path, "r+b") as f:
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )


@pytest.fixture
def rsa_dir(keys_dir: dict[str, Path]) -> Path:
    return keys_dir["rsa2048"]


@pytest.fixture
def ec_dir(keys_dir: dict[str, Path]) -> Path:
    return keys_dir["ecdsa-p256"]


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    """make_file(name, content=CONTENT) -> a fresh file with no security.ima."""

    def make(name: str = "prog", content: bytes = CONTENT) -> Path:
        p = tmp_path / name
        p.write_bytes(content)
        drop_xattr(p)
        drop_xattr(p, EVM)
        return p

    return make


@pytest.fixture
def signed(make_file: Callable[..., Path], rsa_key: imaguard.PrivateKey) -> Path:
    """A file signed with the RSA test key (security.ima, 0x03 v2 signature)."""
    p = make_file("signed-prog")
    imaguard.sign_file(p, rsa_key)
    return p


def run_sub(
    *args: str | os.PathLike[str], timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """The installed ``imaguard`` script as a child process (killed by the timeout)."""
    r = subprocess.run(
        [str(IMAGUARD), *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in r.stdout, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    return r


def decisions(stdout: str) -> list[dict[str, Any]]:
    """Parse ``imaguard check --json`` output (a JSON array)."""
    doc = json.loads(stdout)
    assert isinstance(doc, list)
    return doc
