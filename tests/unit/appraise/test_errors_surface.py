"""Appraisal never turns an error into an answer: an xattr that cannot be read is not "no
xattr", an algorithm OpenSSL refuses is not an invalid signature."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import UnsupportedAlgorithm

import imaguard
from imaguard.appraise import MemoryStore
from imaguard.appraise import _evm as evm_module
from imaguard.appraise._files import open_target
from imaguard.crypto import Certificate
from imaguard.crypto._keys import verify_prehashed
from imaguard.errors import StoreError, UnsupportedAlgorithmError
from imaguard.formats import hashalgo


def _getxattr_failing_with(code: int) -> Any:
    real = os.getxattr

    def fake(fd: Any, name: str, *a: Any, **k: Any) -> bytes:
        if name == "security.evm":
            raise OSError(code, os.strerror(code))
        return real(fd, name, *a, **k)

    return fake


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO, errno.ERANGE])
def test_an_unreadable_evm_xattr_is_an_error_not_no_xattr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    monkeypatch.setattr(os, "getxattr", _getxattr_failing_with(code))
    with open_target(f) as ref:
        with pytest.raises(StoreError) as exc:
            evm_module._xattr(ref.fd, "security.evm")
        assert os.strerror(code) in exc.value.reason
        result = evm_module.evm_verify(ref)
    assert result.status == "unknown"
    assert result.status != "no_xattrs"


@pytest.mark.parametrize("code", [errno.ENODATA, errno.ENOTSUP])
def test_no_attribute_and_no_xattr_support_are_no_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    monkeypatch.setattr(os, "getxattr", _getxattr_failing_with(code))
    with open_target(f) as ref:
        assert evm_module._xattr(ref.fd, "security.evm") is None


class _RefusingKey:
    """A public key whose library refuses the algorithm (as an OpenSSL without it does)."""

    class curve:  # noqa: N801 - shaped as an EC public key's curve
        name = "secp256r1"

    def verify(self, *args: object) -> None:
        raise UnsupportedAlgorithm("not in this OpenSSL")


def test_an_unsupported_algorithm_raises_instead_of_reading_as_invalid() -> None:
    algo = hashalgo.by_name("sha256")
    with pytest.raises(UnsupportedAlgorithmError) as exc:
        verify_prehashed(_RefusingKey(), algo, b"\0" * 32, b"sig")  # type: ignore[arg-type]
    assert exc.value.algorithm == "sha256"
    assert isinstance(exc.value, imaguard.Error)


def test_appraise_reports_an_unsupported_algorithm_as_unknown_not_invalid_signature(
    monkeypatch: pytest.MonkeyPatch, rsa_key: imaguard.PrivateKey, rsa_ring: imaguard.Keyring
) -> None:
    data = b"content"
    value = imaguard.sign_bytes(data, rsa_key).serialize()

    def refuse(self: Certificate, *args: object) -> bool:
        raise UnsupportedAlgorithmError("this OpenSSL cannot verify sha256", "sha256")

    monkeypatch.setattr(Certificate, "verifies", refuse)
    v = imaguard.appraise(data, rsa_ring, value=value)
    assert v.status is imaguard.Status.UNKNOWN
    assert v.cause == imaguard.Cause.UNKNOWN
    assert "cannot verify sha256" in v.detail


def test_appraise_store_error_detail_is_the_reason_field(
    tmp_path: Path, rsa_ring: imaguard.Keyring
) -> None:
    class Broken(MemoryStore):
        def read(self, ref: Any) -> bytes | None:
            raise StoreError("/elsewhere: with: colons", "cannot read: really")

    f = tmp_path / "f"
    f.write_bytes(b"x")
    v = imaguard.appraise(f, rsa_ring, store=Broken())
    assert v.status is imaguard.Status.UNKNOWN
    assert v.detail == "cannot read: really"


def test_a_portable_evm_signature_in_security_ima_is_not_signed(
    rsa_key: imaguard.PrivateKey,
) -> None:
    v2 = imaguard.sign_bytes(b"x", rsa_key).serialize()
    portable = b"\x05" + v2[1:]
    assert imaguard.signature_info(b"x", value=v2).signed is True
    info = imaguard.signature_info(b"x", value=portable)
    assert info.error is None  # it parses
    assert info.signed is False  # but IMA cannot appraise it as a file signature
