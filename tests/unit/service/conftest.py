"""Helpers for the service unit tests: config files written into tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


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
