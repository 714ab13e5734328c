"""Helpers shared by the tests (importable as ``helpers``; fixtures live in the conftest files).

``IS_ROOT`` is decided once here. A test that needs root says so with the ``root`` marker
(``@pytest.mark.root(reason=...)``, or ``needs_root``); the root conftest skips it, with the
reason, when the suite does not run as root.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IS_ROOT = os.geteuid() == 0

REQUIRE_ORACLES = os.environ.get("IMAGUARD_REQUIRE_ORACLES") == "1"
"""Set by ``make test``, which installs every outside tool first: then a missing one fails."""


def oracle_missing(reason: str) -> NoReturn:
    """An outside tool (swtpm, Keylime's venv) is not installed: skip the test with the
    reason and the command that installs it; under ``make test`` (which installs them all)
    fail instead, so that a broken install cannot pass as a skip."""
    if REQUIRE_ORACLES:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def needs_root_because(reason: str) -> pytest.MarkDecorator:
    """The ``root`` marker with the reason a test needs root."""
    return pytest.mark.root(reason=reason)


needs_root = needs_root_because("writing security.ima / security.evm needs root")
