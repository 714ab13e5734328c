"""Keylime 7.14.3's own code, run in Keylime's venv, as the judge of the agent's TPM work.

    .venv-keylime/bin/python keylime_side.py < request.json

One JSON request on stdin, one JSON answer on stdout:

* ``{"op": "makecredential", "uuid", "ek_tpm", "aik_tpm"}`` (Base64 TPM2B_PUBLIC):
  ``Tpm.encrypt_aik_with_ek``, what the registrar does → ``{"blob", "key"}``;
* ``{"op": "check_quote", "nonce", "pubkey", "quote", "aik_tpm", "hash_alg", "mask",
  "ima_list", "policy"}``: ``Tpm().check_quote`` as the verifier calls it (PCR 16 bound to
  ``pubkey``; with ``ima_list`` and ``policy``, PCR 10 replayed and the list judged by the
  runtime policy) → ``{"events": [event ids], "contexts": [...], "pcrs": {n: hex}}``.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import types
from typing import Any


def main() -> int:
    try:
        import gpg  # noqa: F401  (Keylime imports it; nothing here uses it)
    except ImportError:
        sys.modules["gpg"] = types.ModuleType("gpg")
    logging.getLogger("keylime").setLevel(logging.CRITICAL)
    from keylime.agentstates import AgentAttestState
    from keylime.common.algorithms import Hash
    from keylime.ima import file_signatures, ima
    from keylime.mba import mba
    from keylime.tpm.tpm_main import Tpm

    mba.load_imports(skip_custom_policies=True)

    req: dict[str, Any] = json.load(sys.stdin)
    if req["op"] == "makecredential":
        result = Tpm.encrypt_aik_with_ek(
            req["uuid"], base64.b64decode(req["ek_tpm"]), base64.b64decode(req["aik_tpm"])
        )
        assert result is not None
        blob, key = result
        print(json.dumps({"blob": blob.decode(), "key": key}))
        return 0
    policy = None
    if req.get("policy"):
        policy = ima.deserialize_runtime_policy(req["policy"])
    rings = file_signatures.ImaKeyrings()
    failure = Tpm().check_quote(
        AgentAttestState(req.get("uuid", "agent")),
        req["nonce"],
        req["pubkey"],
        req["quote"],
        req["aik_tpm"],
        {"mask": req["mask"]},
        req.get("ima_list"),
        policy,
        hash_alg=Hash(req["hash_alg"]),
        ima_keyrings=rings,
    )
    pcrs = Tpm.get_pcrs_from_quote(req["quote"], False)
    events = [e.event_id for e in failure.events] if failure else []
    contexts = [str(e.context) for e in failure.events] if failure else []
    doc = {"events": events, "contexts": contexts, "pcrs": {str(k): v for k, v in pcrs.items()}}
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
