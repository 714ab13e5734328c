"""Helpers shared by the tests (importable as ``helpers``; fixtures live in the conftest files).

``IS_ROOT`` is decided once here. A test that needs root says so with the ``root`` marker
(``@pytest.mark.root(reason=...)``, or ``needs_root``); the root conftest skips it, with the
reason, when the suite does not run as root.
"""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0


def needs_root_because(reason: str) -> pytest.MarkDecorator:
    """The ``root`` marker with the reason a test needs root."""
    return pytest.mark.root(reason=reason)


needs_root = needs_root_because("writing security.ima / security.evm needs root")
