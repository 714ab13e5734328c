"""Fixtures of the token tests: one SoftHSM token per test session (tokens/softhsm.py).

A PKCS#11 module reads its configuration once per process, so the token and
``SOFTHSM2_CONF`` are made once for the session and the variable stays set until it ends
(the ``imaguard`` child processes inherit it). ``IMAGUARD_PKCS11_MODULE`` and
``IMAGUARD_PKCS11_PIN`` are cleared, so every test says what it uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import oracle_missing
from imaguard.crypto import default_pkcs11_module
from interop.tokens.softhsm import Token, make_token

_CLEARED = ("IMAGUARD_PKCS11_MODULE", "IMAGUARD_PKCS11_PIN")


@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    base = tmp_path_factory.mktemp("softhsm")
    saved = {k: os.environ.get(k) for k in ("SOFTHSM2_CONF", *_CLEARED)}
    os.environ["SOFTHSM2_CONF"] = str(base / "softhsm2.conf")
    for name in _CLEARED:
        os.environ.pop(name, None)
    try:
        if not os.path.exists(default_pkcs11_module()):
            oracle_missing(
                f"p11-kit's proxy module {default_pkcs11_module()} is missing; `make test` "
                "installs it (apt-get install p11-kit-modules)"
            )
        yield make_token(base)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def pin_env(monkeypatch: pytest.MonkeyPatch, token: Token) -> str:
    """The token's PIN in IMAGUARD_PKCS11_PIN (for this test and its child processes)."""
    monkeypatch.setenv("IMAGUARD_PKCS11_PIN", token.pin)
    return token.pin


@pytest.fixture(scope="session")
def token_certs(token: Token, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate (DER) per token key, made by ``imaguard keys generate --key``
    in a child process (the test process then has no login of its own yet)."""
    out: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("token-certs")
    for obj in ("rsa-key", "ec-key", "rsa-imported", "ec-imported"):
        d = base / obj
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "imaguard",
                "keys",
                "generate",
                "--key",
                token.uri(obj, pin=True),
                "--out",
                str(d),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        out[obj] = d / "cert.der"
    return out
