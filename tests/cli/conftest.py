"""Fixtures for the command-line tests (defined in helpers.core and helpers.measure)."""

from helpers.core import ec_dir, make_file, rsa_dir, signed
from helpers.measure import keylime, second_swtpm, swtpm, tpm

__all__ = ["ec_dir", "keylime", "make_file", "rsa_dir", "second_swtpm", "signed", "swtpm", "tpm"]
