"""Fixtures for the attestation tests: swtpm and Keylime (helpers.measure), imaguard's log
kept with that swtpm, and Keylime's own code as the judge (keylime_side.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers.measure import KEYLIME_PYTHON, Keylime, Swtpm, keylime, swtpm, tpm
from imaguard.formats.template import TemplateDescriptor
from imaguard.measure import LogStore, file_entry, policy_from_records, records_from_any

__all__ = [
    "KeylimeSide",
    "keylime",
    "keylime_side",
    "make_log",
    "policy_of",
    "safe_clock",
    "swtpm",
    "tpm",
]

SIDE = Path(__file__).with_name("keylime_side.py")


class KeylimeSide:
    """Keylime's registrar and verifier code, called offline (keylime_side.py)."""

    def __call__(self, **request: Any) -> dict[str, Any]:
        r = subprocess.run(
            [KEYLIME_PYTHON, SIDE],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc


@pytest.fixture
def keylime_side(keylime: Keylime) -> KeylimeSide:
    return KeylimeSide()


def make_log(state: Path, tpm: Swtpm, files: list[Path]) -> list[int]:
    """imaguard's log of ``files`` (ima-ng), kept with ``tpm``; the indexes added."""
    desc = TemplateDescriptor.lookup("ima-ng")
    out = []
    with LogStore(state, tpm=tpm.tcti) as log:
        for f in files:
            result = log.append(file_entry(f, desc))
            assert result.index is not None
            out.append(result.index)
    return out


def policy_of(state: Path) -> str:
    """The Keylime runtime policy allowing everything the log holds."""
    records, bank, problem = records_from_any((state / "binary_runtime_measurements").read_bytes())
    assert problem is None
    return policy_from_records(records, log_hash_alg=bank).serialize()


def safe_clock(tpm: Swtpm) -> None:
    """Make the TPM report its clock as ``safe`` again, as a machine's TPM does.

    The ``tpm`` fixture resets the session's swtpm without TPM2_Shutdown: a disorderly
    reset, after which the TPM's clock is not ``safe`` until it is next saved to NV (the
    reference TPM does so every 2^22 ms; TimeClockUpdate), and Keylime refuses every quote
    meanwhile (``Tpm.check_quote_timing``: "clock safe flag is disabled"). TPM2_ClockSet
    a little over that interval ahead saves it now.
    """
    import tpm2_pytss as t

    esys = t.ESAPI(t.TCTILdr.parse(tpm.tcti))
    try:
        now = int(esys.read_clock().clockInfo.clock)
        esys.clock_set(now + (1 << 23))
        assert int(esys.read_clock().clockInfo.safe) == 1
    finally:
        esys.close()
