"""Errors in the measurement layer reach the caller: a bad ``.sig`` is not "no signature",
a TPM start-up failure is not ignored, a torn tail is told from damage by type."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from imaguard.appraise import MemoryStore
from imaguard.errors import (
    BackendError,
    FormatError,
    LogIntegrityError,
    StoreError,
    TruncatedError,
)
from imaguard.formats.measurelist import iter_binary, serialize_binary
from imaguard.formats.template import TemplateDescriptor
from imaguard.measure import LogStore, SoftwarePcrs, buffer_entry, file_entry
from imaguard.measure import _logstore as logstore_module
from imaguard.measure import _tpm as tpm_module

IMA_SIG = TemplateDescriptor.lookup("ima-sig")


class _FailingStore(MemoryStore):
    """A store whose read fails, as a store without xattrs or with an unreadable value does."""

    def __init__(self, *, unsupported: bool) -> None:
        super().__init__()
        self.unsupported = unsupported

    def read(self, ref: Any) -> bytes | None:
        raise StoreError(ref.name, "cannot read", unsupported=self.unsupported)


def test_a_bad_sidecar_sig_raises_instead_of_logging_no_signature(tmp_path: Path) -> None:
    f = tmp_path / "prog"
    f.write_bytes(b"content\n")
    (tmp_path / "prog.sig").mkdir()  # a .sig that exists but is not a signature file
    with pytest.raises(StoreError) as exc:
        file_entry(f, IMA_SIG, store="sigfile")
    assert exc.value.path == str(f) + ".sig"
    assert exc.value.reason == "signature file is not a regular file"
    assert exc.value.unsupported is False


def test_an_unreadable_value_raises(tmp_path: Path) -> None:
    f = tmp_path / "prog"
    f.write_bytes(b"content\n")
    with pytest.raises(StoreError):
        file_entry(f, IMA_SIG, store=_FailingStore(unsupported=False))


def test_no_xattr_support_is_no_value_and_the_entry_has_no_signature(tmp_path: Path) -> None:
    f = tmp_path / "prog"
    f.write_bytes(b"content\n")
    entry = file_entry(f, IMA_SIG, store=_FailingStore(unsupported=True))
    assert entry.fields[2] == b""


# -- TPM start-up -------------------------------------------------------------------------


def test_only_tpm_rc_initialize_counts_as_already_started() -> None:
    t = pytest.importorskip("tpm2_pytss", reason="tpm2-pytss is the optional [tpm] extra")
    exc = t.TSS2_Exception
    assert tpm_module._already_started(t, exc(0x100))
    assert tpm_module._already_started(t, exc(0x0B0100))  # passed on by a resource manager
    assert not tpm_module._already_started(t, exc(0x101))  # TPM2_RC_FAILURE
    assert not tpm_module._already_started(t, exc(0x0A0100))  # another layer's 0x100
    assert not tpm_module._already_started(t, RuntimeError("already initialized"))


def _fake_pytss(startup_error: BaseException) -> Any:
    t = pytest.importorskip("tpm2_pytss", reason="tpm2-pytss is the optional [tpm] extra")

    class Esys:
        closed = False

        def __init__(self, tcti: object) -> None:
            pass

        def startup(self, su: object) -> None:
            raise startup_error

        def close(self) -> None:
            Esys.closed = True

    fake = types.SimpleNamespace(
        ESAPI=Esys,
        TCTILdr=types.SimpleNamespace(parse=lambda s: s),
        TPM2_SU=t.TPM2_SU,
        TPM2_RC=t.TPM2_RC,
        TSS2_Exception=t.TSS2_Exception,
    )
    return fake, Esys


def test_a_failing_tpm_startup_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    t = pytest.importorskip("tpm2_pytss", reason="tpm2-pytss is the optional [tpm] extra")
    fake, esys = _fake_pytss(t.TSS2_Exception(0x101))
    monkeypatch.setattr(tpm_module, "_pytss", lambda: fake)
    with pytest.raises(BackendError, match="start-up failed"):
        tpm_module.TpmPcrs("fake:")
    assert esys.closed


def test_an_already_started_tpm_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    t = pytest.importorskip("tpm2_pytss", reason="tpm2-pytss is the optional [tpm] extra")
    fake, _ = _fake_pytss(t.TSS2_Exception(0x100))
    monkeypatch.setattr(tpm_module, "_pytss", lambda: fake)
    monkeypatch.setattr(tpm_module.TpmPcrs, "_read_banks", lambda self: ("sha256",))
    assert tpm_module.TpmPcrs("fake:").banks() == ("sha256",)


# -- torn tail vs damage, by type ---------------------------------------------------------


def test_a_cut_short_record_is_a_truncated_error() -> None:
    data = serialize_binary([buffer_entry("a", b"x"), buffer_entry("b", b"y")])
    for cut in range(1, 40):
        with pytest.raises(TruncatedError):
            list(iter_binary(data[:-cut]))


def test_a_bad_ima_name_length_is_damage_not_a_torn_tail() -> None:
    ima = TemplateDescriptor.lookup("ima")
    data = bytearray(serialize_binary([buffer_entry("a", b"x", ima)]))
    # pcr(4) sha1(20) name_len(4) "ima"(3) d(20) -> the n length field
    at = 4 + 20 + 4 + 3 + 20
    data[at : at + 4] = (300).to_bytes(4, "little")
    with pytest.raises(FormatError) as exc:
        list(iter_binary(bytes(data)))
    assert not isinstance(exc.value, TruncatedError)


# -- the PCR backend's reset counter ------------------------------------------------------


class _CountingPcrs(SoftwarePcrs):
    """A PCR backend that is not the TPM class but has a reset counter."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__(("sha1", "sha256"))
        self.count = 1

    def reset_count(self) -> int | None:
        return self.count


def test_the_log_is_bound_to_any_backends_reset_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _CountingPcrs()
    monkeypatch.setattr(logstore_module, "open_tpm", lambda tcti: backend if tcti else None)
    with LogStore(tmp_path / "s", tpm="fake") as store:
        assert len(store) == 1
    state = json.loads((tmp_path / "s" / "state.json").read_text())
    assert state["tpm_reset_count"] == 1
    with LogStore(tmp_path / "s", tpm="fake") as store:  # same boot: fine
        assert len(store) == 1
    backend.count = 2  # a reboot
    with pytest.raises(LogIntegrityError, match="reset"):
        LogStore(tmp_path / "s", tpm="fake")


def test_software_pcrs_have_no_reset_count() -> None:
    assert SoftwarePcrs().reset_count() is None
