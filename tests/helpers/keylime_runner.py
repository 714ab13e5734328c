"""Run Keylime's own verifier on an ASCII log, offline (spec keylime.md §2).

Usage (with the Keylime venv's python): keylime_runner.py LOG POLICY [--pcr BANK=HEX ...]
Prints one JSON object: {"banks": {bank: {"running": hex, "events": [event ids]}}}.
Exit 0 always when it ran; the caller judges the events.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import types


def main() -> int:
    os.environ.setdefault("KEYLIME_VERIFIER_IGNORE_TOMTOU_ERRORS", "false")
    try:
        import gpg  # noqa: F401
    except ImportError:
        sys.modules["gpg"] = types.ModuleType("gpg")
    import logging

    logging.getLogger("keylime").setLevel(logging.CRITICAL)
    from keylime.common import algorithms
    from keylime.ima import file_signatures, ima

    log_path, policy_path = sys.argv[1], sys.argv[2]
    pcrs: dict[str, str | None] = {"sha1": None, "sha256": None}
    for spec in sys.argv[3:]:
        if spec.startswith("--pcr="):
            bank, _, value = spec[len("--pcr=") :].partition("=")
            pcrs[bank] = value
    with open(policy_path) as f:
        policy = ima.deserialize_runtime_policy(f.read())
    ima.validate_runtime_policy(policy)
    with open(log_path) as f:
        lines = f.read().split("\n")
    out: dict[str, dict[str, object]] = {}
    for bank, pcr in pcrs.items():
        rings = file_signatures.ImaKeyrings()
        rings.set_tenant_keyring(
            file_signatures.ImaKeyring.from_string(policy["verification-keys"])
        )
        running, failure = ima.process_measurement_list(
            None,
            list(lines),
            copy.deepcopy(policy),
            pcrval=pcr,
            ima_keyrings=rings,
            boot_aggregates=None,
            hash_alg=algorithms.Hash(bank),
        )
        events = [e.event_id for e in failure.events] if failure else []
        out[bank] = {"running": running, "events": events}
    print(json.dumps({"banks": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
