"""Fixtures for the interop tests: outside tools (helpers.interop) and swtpm/Keylime
(helpers.measure)."""

from helpers.interop import (
    algo,
    interop_keys,
    key_type,
    make_file,
    root_only,
    sample,
    signer,
    tools,
)
from helpers.measure import keylime, second_swtpm, swtpm, tpm

__all__ = [
    "algo",
    "interop_keys",
    "key_type",
    "keylime",
    "make_file",
    "root_only",
    "sample",
    "second_swtpm",
    "signer",
    "swtpm",
    "tools",
    "tpm",
]
