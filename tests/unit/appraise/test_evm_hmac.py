"""The EVM HMAC over given metadata bytes: no xattr is read or written, so no root needed
(the tests over security.evm itself are in test_evm.py, root only)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

import imaguard
from imaguard.appraise._evm import evm_hmac


def test_hmac_key_of_128_bytes_and_too_long() -> None:
    long_key = bytes(range(128))
    data = b"metadata"
    assert evm_hmac(data, long_key).hmac == hmac.new(long_key, data, hashlib.sha1).digest()
    with pytest.raises(imaguard.UsageError):
        evm_hmac(data, bytes(129))
    with pytest.raises(imaguard.UsageError):
        evm_hmac(data, b"")
