"""Attestation benchmarks: ``imaguard agent`` with a 10,000-entry log, and Keylime's cost.

1. Quote latency: an in-process :class:`imaguard.attest.Agent` on a swtpm (127.0.0.1),
   asked over mTLS as Keylime's verifier asks (``GET /v2.6/quotes/integrity``), from the
   request to the last byte of the answer: the first round (``ima_ml_entry=0``, the whole
   list, ~1.4 MB of ASCII; the very first one also parses the log: reported apart) and a
   steady round (``ima_ml_entry`` = the next entry: no new
   entries), median and p95 over the repetitions. The identity quote too.
2. The verifier's time per round on that quote, in Keylime 7.14.3's own code, in its
   venv: ``Tpm().check_quote`` as ``process_quote_response`` calls it (quote signature,
   nonce, PCR 16, PCR 10 replayed over the list, runtime policy), against
   ``ima.process_measurement_list`` alone on the same list and policy (what the offline
   interop tests run: no quote, no TPM). Both are timed in-process around the call.

Run: ``.venv/bin/python bench/bench_attest.py [--entries N] [--reps R] [--json OUT]``;
needs swtpm (``make deps``) and Keylime's venv (``make keylime``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from imaguard.attest import Agent, load_config
from imaguard.formats.template import (
    TemplateDescriptor,
    TemplateEntry,
    encode_digest_ng,
    encode_name,
)
from imaguard.measure import LogStore, policy_from_records, records_from_any

ROOT = Path(__file__).resolve().parent.parent

KEYLIME_TIMER = r"""
import copy, json, sys, time, types, logging
sys.modules.setdefault("gpg", types.ModuleType("gpg"))
logging.disable(logging.CRITICAL)
from keylime.agentstates import AgentAttestState
from keylime.common.algorithms import Hash
from keylime.ima import file_signatures, ima
from keylime.mba import mba
from keylime.tpm.tpm_main import Tpm
mba.load_imports(skip_custom_policies=True)
req = json.load(sys.stdin)
policy = ima.deserialize_runtime_policy(req["policy"])
out = {"check_quote": [], "process_measurement_list": [], "events": []}
for _ in range(req["reps"]):
    rings = file_signatures.ImaKeyrings()
    t = time.perf_counter()
    failure = Tpm().check_quote(AgentAttestState("bench"), req["nonce"], req["pubkey"],
        req["quote"], req["aik_tpm"], {"mask": "0x400"}, req["ima_list"],
        copy.deepcopy(policy), hash_alg=Hash("sha256"), ima_keyrings=rings)
    out["check_quote"].append(time.perf_counter() - t)
    out["events"] = [e.event_id for e in failure.events] if failure else []
    rings = file_signatures.ImaKeyrings()
    t = time.perf_counter()
    _, failure2 = ima.process_measurement_list(None, req["ima_list"].split("\n"),
        copy.deepcopy(policy), pcrval=req["pcr10"], ima_keyrings=rings,
        boot_aggregates=None, hash_alg=Hash("sha256"))
    out["process_measurement_list"].append(time.perf_counter() - t)
    out["events"] += [e.event_id for e in failure2.events] if failure2 else []
print(json.dumps(out))
"""


def _free_port(pair: bool = False) -> int:
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if not pair:
                return port
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _client_ca(work: Path) -> None:
    """A CA and a client certificate from it (the verifier's, for the agent's mTLS)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cl_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def cert(cn: str, key: rsa.RSAPrivateKey, ca: bool) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )

    (work / "ca.pem").write_bytes(
        cert("bench CA", ca_key, True).public_bytes(serialization.Encoding.PEM)
    )
    (work / "client.pem").write_bytes(
        cert("verifier", cl_key, False).public_bytes(serialization.Encoding.PEM)
    )
    (work / "client-key.pem").write_bytes(_pem_key(cl_key))


def _entries(n: int) -> list[TemplateEntry]:
    rng = random.Random(7)
    desc = TemplateDescriptor.lookup("ima-ng")
    return [
        TemplateEntry(
            10,
            desc,
            (
                encode_digest_ng("sha256", rng.randbytes(32)),
                encode_name(f"/usr/lib/p{i % 97}/f{i}"),
            ),
        )
        for i in range(n)
    ]


def _stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "median_ms": round(statistics.median(s) * 1000, 2),
        "p95_ms": round(s[min(len(s) - 1, int(len(s) * 0.95))] * 1000, 2),
        "min_ms": round(s[0] * 1000, 2),
    }


def run(entries: int, reps: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="imaguard-bench-attest-"))
    tpm_port = _free_port(pair=True)
    pid_file = work / "swtpm.pid"
    (work / "tpm").mkdir()
    subprocess.run(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={work / 'tpm'}",
         "--server", f"type=tcp,port={tpm_port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={tpm_port + 1},bindaddr=127.0.0.1",
         "--flags", "not-need-init,startup-clear", "--pid", f"file={pid_file}", "--daemon"],
        check=True, timeout=30,
    )  # fmt: skip
    tcti = f"swtpm:host=127.0.0.1,port={tpm_port}"
    agent: Agent | None = None
    try:
        state = work / "state"
        t = time.perf_counter()
        with LogStore(state, tpm=tcti) as log:
            log.append_many(_entries(entries))
        fill_s = time.perf_counter() - t
        records, bank, _ = records_from_any((state / "binary_runtime_measurements").read_bytes())
        policy = policy_from_records(records, log_hash_alg=bank).serialize()
        _client_ca(work)
        port = _free_port()
        conf = work / "agent.toml"
        conf.write_text(
            f'uuid = "bench"\nregistrar = "127.0.0.1:1"\nlisten = "127.0.0.1:{port}"\n'
            f'tpm = "{tcti}"\nstate = "{state}"\n[tls]\ncert = "cert.pem"\nkey = "key.pem"\n'
            'ca = "ca.pem"\n'
        )
        agent = Agent(load_config(conf))
        agent.start()
        ctx = ssl.create_default_context(cafile=str(work / "cert.pem"))
        ctx.check_hostname = False
        ctx.load_cert_chain(work / "client.pem", work / "client-key.pem")

        def get(path: str) -> tuple[float, dict[str, Any]]:
            t0 = time.perf_counter()
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
            conn.request("GET", path)
            body = conn.getresponse().read()
            conn.close()
            elapsed = time.perf_counter() - t0
            doc: dict[str, Any] = json.loads(body)["results"]
            return elapsed, doc

        total = entries + 1
        full, steady, ident = [], [], []
        first: dict[str, Any] = {}
        for i in range(reps):
            dt, first = get(
                f"/v2.6/quotes/integrity?nonce=n{i}&mask=0x400&partial=0&ima_ml_entry=0"
            )
            full.append(dt)
            dt, doc = get(
                f"/v2.6/quotes/integrity?nonce=s{i}&mask=0x400&partial=1&ima_ml_entry={total}"
            )
            assert doc["ima_measurement_list"] == ""
            steady.append(dt)
            ident.append(get(f"/v2.6/quotes/identity?nonce=i{i}")[0])
        nonce = "kl1"
        _, q = get(f"/v2.6/quotes/integrity?nonce={nonce}&mask=0x400&partial=0&ima_ml_entry=0")
        from base64 import b64decode, b64encode

        pcrblob = b64decode(q["quote"].split(":")[2])
        pcr10 = pcrblob[4 + 16 * 8 + 4 + 4 + 2 : 4 + 16 * 8 + 4 + 4 + 2 + 32].hex()
        kl_python = os.environ.get(
            "IMAGUARD_KEYLIME_PYTHON", str(ROOT / ".venv-keylime" / "bin" / "python")
        )
        req = {
            "reps": max(3, reps // 4),
            "nonce": nonce,
            "pubkey": q["pubkey"],
            "quote": q["quote"],
            "aik_tpm": b64encode(agent.tpm.ak_public).decode(),
            "ima_list": q["ima_measurement_list"],
            "policy": policy,
            "pcr10": pcr10,
        }
        r = subprocess.run(
            [kl_python, "-c", KEYLIME_TIMER],
            input=json.dumps(req).encode(),
            capture_output=True,
            timeout=1800,
            check=True,
        )
        kl = json.loads(r.stdout)
        if kl["events"]:
            raise RuntimeError(f"Keylime did not accept the benchmark's quote: {kl['events']}")
        return {
            "entries": total,
            "ima_list_bytes": len(first["ima_measurement_list"]),
            "log_fill_s": round(fill_s, 2),
            "quote_integrity_first_ms": round(full[0] * 1000, 2),
            "quote_integrity_full": _stats(full),
            "quote_integrity_steady": _stats(steady),
            "quote_identity": _stats(ident),
            "keylime_check_quote_round": _stats(kl["check_quote"]),
            "keylime_process_measurement_list": _stats(kl["process_measurement_list"]),
            "reps": reps,
            "keylime_reps": req["reps"],
        }
    finally:
        if agent is not None:
            agent.close()
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    result = run(args.entries, args.reps)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
