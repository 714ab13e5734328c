"""Fixtures for the appraisal tests that use the core helpers (defined in helpers.core)."""

from helpers.core import ec_dir, make_file, rsa_dir, signed

__all__ = ["ec_dir", "make_file", "rsa_dir", "signed"]
