"""Fixtures for the measurement tests (defined in helpers.measure)."""

from helpers.measure import keylime, second_swtpm, swtpm, tpm

__all__ = ["keylime", "second_swtpm", "swtpm", "tpm"]
