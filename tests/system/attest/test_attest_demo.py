"""``make attest-demo``, time-bounded: an unchanged Keylime 7.14.3 attests an imaguard host.

The script (scripts/attest_demo.py) runs swtpm, Keylime's verifier and registrar from the
PyPI package, ``imaguard agent`` and ``keylime_tenant`` on 127.0.0.1, and exits 0 only
when it saw the whole sequence: registration and activation, several attested rounds, a
restarted agent still attested, an unlisted program failing the agent with the file
named, and a TPM reset with the log kept detected. Every process it starts is stopped by
its PID; its own deadline is shorter than this test's timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import oracle_missing
from helpers.measure import KEYLIME_PYTHON, ROOT

DEADLINE = 300
STEPS = (
    "[1] swtpm",
    "[2] imaguard policy runtime",
    "[3] Keylime's verifier and registrar",
    "[4] imaguard agent: register",
    "[5] keylime_tenant -c add",
    "[6] the verifier attests the agent",
    "[7] the agent restarts",
    "[8] an unlisted program is measured",
    "[9] re-added with a policy listing it",
)


def test_attest_demo_sequence(tmp_path: Path) -> None:
    keylime_bin = KEYLIME_PYTHON.parent
    if not (keylime_bin / "keylime_verifier").exists():
        oracle_missing(f"Keylime's verifier is missing in {keylime_bin}: run `make keylime`")
    work = tmp_path / "demo"
    env = {**os.environ, "IMAGUARD_KEYLIME_BIN": str(keylime_bin)}
    try:
        r = subprocess.run(
            [
                sys.executable,
                ROOT / "scripts" / "attest_demo.py",
                "--workdir",
                work,
                "--deadline",
                str(DEADLINE),
            ],
            capture_output=True,
            timeout=DEADLINE + 60,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the attest demo overran its deadline: {e}")
    out = r.stdout.decode(errors="replace")
    if r.returncode == 2:
        oracle_missing(f"the attest demo misses a tool:\n{out}")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    positions = [out.index(step) for step in STEPS]
    assert positions == sorted(positions), out
    intruder = work / "bin" / "intruder"
    assert f"File not found in allowlist: {intruder}" in out
    assert "event ima.validation.ima-ng.not_in_allowlist" in out
    assert "event ima.pcr_mismatch" in out
    assert out.rstrip().endswith(
        "all steps seen: the agent attests, survives a restart, and fails when it must"
    )
    # The agent said what it saw, too: the reset, in its own log.
    agent_log = (work / "agent.log").read_text()
    assert "registered and activated (API 2.6)" in agent_log
    assert "the TPM was reset since the last quote" in agent_log
