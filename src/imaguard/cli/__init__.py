"""The ``imaguard`` command line (private: use the library API from Python)."""

from imaguard.cli._main import cli, main

__all__ = ["cli", "main"]
