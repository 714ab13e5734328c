"""Verified loaders: run, import and read only bytes that were verified in memory.

* :func:`prepare_exec` / :func:`exec_verified` / :func:`spawn_verified` (``imaguard exec``):
  a program, its ``#!`` interpreters and its ELF loader are verified, and the verified
  memfd is what the kernel executes.
* :func:`install_import_guard` (``python -m imaguard.run``): every Python module imported
  afterwards is verified from the bytes that are then compiled.
* :func:`verified_open`: a read-only file over the verified copy of a config or plugin.

README, "Verified loaders", says what each covers and where the gaps are.
"""

from imaguard.loaders._exec import (
    ExecRefused,
    PreparedExec,
    exec_verified,
    parse_shebang,
    prepare_exec,
    spawn_verified,
)
from imaguard.loaders._imports import ImportGuard, install_import_guard
from imaguard.loaders._open import VerifiedReader, verified_open

__all__ = [
    "ExecRefused",
    "ImportGuard",
    "PreparedExec",
    "VerifiedReader",
    "exec_verified",
    "install_import_guard",
    "parse_shebang",
    "prepare_exec",
    "spawn_verified",
    "verified_open",
]
