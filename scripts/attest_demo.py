#!/usr/bin/env python3
"""Attest an imaguard host with an unchanged Keylime 7.14 (scripts/attest-demo.sh runs this).

Everything runs on 127.0.0.1, in one temporary directory, with free ports: a software TPM
(swtpm), imaguard's measurement log kept with it, Keylime's verifier and registrar from
the PyPI package (.venv-keylime: sqlite, certificates made by the verifier, ``tls_dir =
generate``), ``imaguard agent``, and ``keylime_tenant``. The steps, each printed:

 1. swtpm; imaguard measures two programs into its log (PCR 10 of the TPM);
 2. ``imaguard policy runtime`` makes a Keylime runtime policy from that log;
 3. Keylime's verifier and registrar start;
 4. ``imaguard agent`` registers with the registrar and activates its AK;
 5. ``keylime_tenant -c add`` adds the agent with that policy;
 6. the verifier attests the agent, several rounds;
 7. the agent is restarted (same TPM, same log): the verifier keeps attesting it;
 8. an unlisted program is measured: the verifier marks the agent failed, naming the file;
 9. the agent is re-added with a policy that lists it, attests again; the TPM is reset
    (a reboot) while the log is kept: the verifier detects it and marks the agent failed.

Exit 0 only when that whole sequence was seen; 1 on the first step that did not happen
(its evidence printed), 2 when a tool is missing. Every process started here is stopped
by its PID at the end; ``--deadline`` bounds the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
IMAGUARD = VENV_BIN / "imaguard"
KEYLIME_BIN = Path(os.environ.get("IMAGUARD_KEYLIME_BIN") or ROOT / ".venv-keylime" / "bin")
UUID = "d432fbb3-d2f1-4a97-9ef7-75bd81c0a11e"
API = "2.6"


class StepError(Exception):
    pass


class MissingToolError(Exception):
    pass


def say(msg: str) -> None:
    print(msg, flush=True)


def free_port(pair: bool = False) -> int:
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if not pair:
                return port
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port")


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StepError(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise StepError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class Demo:
    def __init__(self, work: Path, deadline: float, verbose: bool) -> None:
        self.work = work
        self.deadline = deadline
        self.verbose = verbose
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.swtpm_pid: int | None = None
        self.kl_dir = work / "keylime"
        self.state = work / "state"
        self.bin = work / "bin"
        self.env = {**os.environ, "KEYLIME_DIR": str(self.kl_dir), "PYTHONUNBUFFERED": "1"}

    # -- processes -------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, *args: str | os.PathLike[str], timeout: float = 120) -> str:
        argv = [os.fspath(a) for a in args]
        try:
            r = subprocess.run(
                argv,
                capture_output=True,
                timeout=min(timeout, max(self.left(), 1)),
                env=self.env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError as e:
            raise MissingToolError(f"{argv[0]} is not installed ({e})") from e
        except subprocess.TimeoutExpired as e:
            raise StepError(f"{' '.join(argv)} took too long") from e
        out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        if r.returncode != 0:
            raise StepError(f"$ {' '.join(argv)}\nexit {r.returncode}\n{out[-4000:]}")
        if self.verbose:
            say(textwrap.indent(out.rstrip(), "    | "))
        return out

    def spawn(self, name: str, *args: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
        log = self.work / f"{name}.log"
        self.logs[name] = log
        f = open(log, "ab")  # noqa: SIM115 - the child keeps it
        try:
            proc = subprocess.Popen(
                [os.fspath(a) for a in args],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.work,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise MissingToolError(f"{args[0]} is not installed ({e})") from e
        finally:
            f.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: it and its workers
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        pid, self.swtpm_pid = self.swtpm_pid, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log_text(self, name: str) -> str:
        try:
            return self.logs[name].read_text(errors="replace")
        except (KeyError, OSError):
            return ""

    # -- swtpm -----------------------------------------------------------------------------
    def start_swtpm(self) -> None:
        if shutil.which("swtpm") is None:
            raise MissingToolError("swtpm is not installed (make deps)")
        tpm_dir = self.work / "swtpm"
        tpm_dir.mkdir()
        self.tpm_port = free_port(pair=True)
        pid_file = tpm_dir / "pid"
        self.run(
            "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm_dir}",
            "--server", f"type=tcp,port={self.tpm_port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={self.tpm_port + 1},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear", "--pid", f"file={pid_file}",
            "--log", f"file={tpm_dir / 'swtpm.log'}", "--daemon",
        )  # fmt: skip
        for _ in range(100):
            with contextlib.suppress(OSError, ValueError):
                self.swtpm_pid = int(pid_file.read_text())
                break
            time.sleep(0.05)
        wait_port(self.tpm_port, 10)
        self.tcti = f"swtpm:host=127.0.0.1,port={self.tpm_port}"

    def tpm_command(self, cmd: bytes) -> int:
        with socket.create_connection(("127.0.0.1", self.tpm_port), 10) as s:
            s.sendall(cmd)
            head = s.recv(10)
        return int(struct.unpack(">HII", head)[2])

    def reset_tpm(self) -> None:
        """A reboot, for the TPM, as an operating system does it: TPM2_Shutdown(CLEAR),
        the reset (CMD_INIT on swtpm's control port), TPM2_Startup(CLEAR)."""
        rc = self.tpm_command(struct.pack(">HIIH", 0x8001, 12, 0x145, 0))
        if rc != 0:
            raise StepError(f"TPM2_Shutdown before the reset: rc {rc:#x}")
        with socket.create_connection(("127.0.0.1", self.tpm_port + 1), 10) as s:
            s.sendall(struct.pack(">II", 2, 0))
            if s.recv(4) != b"\0\0\0\0":
                raise StepError("swtpm refused CMD_INIT")
        rc = self.tpm_command(struct.pack(">HIIH", 0x8001, 12, 0x144, 0))
        if rc not in (0, 0x100):
            raise StepError(f"TPM2_Startup after the reset: rc {rc:#x}")

    # -- Keylime ---------------------------------------------------------------------------
    def keylime_configs(self) -> None:
        self.kl_dir.mkdir()
        self.verifier_port = free_port()
        self.registrar_port = free_port()
        self.registrar_tls_port = free_port()
        conf = self.work / "keylime-conf"
        conf.mkdir()
        common_db = "database_url = sqlite\ndatabase_pool_sz_ovfl = 5,10\nauto_migrate_db = True\n"
        da = (
            "durable_attestation_import = \npersistent_store_url = \ntransparency_log_url = \n"
            "time_stamp_authority_url = \ntime_stamp_authority_certs_path = \n"
            "persistent_store_format = json\npersistent_store_encoding = \n"
            "transparency_log_sign_algo = sha256\n"
        )
        files = {
            "verifier": f"""[verifier]
version = 2.6
uuid = default
ip = 127.0.0.1
port = {self.verifier_port}
registrar_ip = 127.0.0.1
registrar_port = {self.registrar_tls_port}
enable_agent_mtls = True
tls_dir = generate
server_key = default
server_key_password =
server_cert = default
cert_subject_alternative_names = 127.0.0.1,localhost
trusted_client_ca = default
client_key = default
client_key_password =
client_cert = default
trusted_server_ca = default
authorization_provider = simple
{common_db}num_workers = 1
max_workers = 4
exponential_backoff = True
retry_interval = 1
max_retries = 10
quote_interval = 1
max_upload_size = 104857600
request_timeout = 60.0
measured_boot_policy_name = accept-all
measured_boot_imports = []
measured_boot_evaluate = once
severity_labels = ["info", "notice", "warning", "error", "critical", "alert", "emergency"]
severity_policy = [{{"event_id": ".*", "severity_label" : "emergency"}}]
ignore_tomtou_errors = False
{da}signed_attributes =
require_allow_list_signatures = False
mode = pull
challenge_lifetime = 1800
verification_timeout = 0
session_create_rate_limit_per_ip = 50
session_create_rate_limit_window_ip = 60
session_create_rate_limit_per_agent = 15
session_create_rate_limit_window_agent = 60
session_lifetime = 180
extend_token_on_attestation = True
auto_recover_attestation_failures = False
shutdown_drain_timeout = 2

[revocations]
enabled_revocation_notifications = []
zmq_ip = 127.0.0.1
zmq_port = {free_port()}
webhook_url =
""",
            "registrar": f"""[registrar]
version = 2.6
ip = 127.0.0.1
port = {self.registrar_port}
tls_port = {self.registrar_tls_port}
tls_dir = default
server_key = default
server_key_password =
server_cert = default
cert_subject_alternative_names = 127.0.0.1,localhost
trusted_client_ca = default
authorization_provider = simple
{common_db}max_workers = 4
{da}signed_attributes = ek_tpm,aik_tpm,ekcert
tpm_identity = default
malformed_cert_action = warn
""",
            # The swtpm here has no EK certificate (a real TPM has one: drop
            # require_ek_cert = False and give tpm_cert_store the vendors' CAs).
            "tenant": f"""[tenant]
version = 2.6
verifier_ip = 127.0.0.1
verifier_port = {self.verifier_port}
registrar_ip = 127.0.0.1
registrar_port = {self.registrar_tls_port}
tls_dir = default
enable_agent_mtls = True
client_key = default
client_key_password =
client_cert = default
trusted_server_ca = default
tpm_cert_store = {self.kl_dir / "tpm_cert_store"}
max_payload_size = 1048576
accept_tpm_hash_algs = ['sha512', 'sha384', 'sha256']
accept_tpm_encryption_algs = ['ecc', 'rsa']
accept_tpm_signing_algs = ['ecschnorr', 'rsassa']
exponential_backoff = True
retry_interval = 1
max_retries = 10
request_timeout = 60
require_ek_cert = False
ek_check_script =
mb_refstate =
""",
            "ca": """[ca]
version = 2.6
password = default
cert_country = US
cert_ca_name = Keylime Certificate Authority
cert_state = MA
cert_locality = Lexington
cert_organization = Keylime
cert_org_unit = 53
cert_ca_lifetime = 3650
cert_lifetime = 365
cert_bits = 2048
cert_crl_dist = http://localhost:38080/crl
""",
            "logging": """[logging]
version = 2.6

[loggers]
keys = root,keylime

[handlers]
keys = consoleHandler

[formatters]
keys = formatter

[formatter_formatter]
format = %(asctime)s.%(msecs)03d - %(name)s - %(levelname)s - %(message)s
datefmt = %Y-%m-%d %H:%M:%S

[logger_root]
level = INFO
handlers = consoleHandler

[handler_consoleHandler]
class = StreamHandler
level = INFO
formatter = formatter
args = (sys.stdout,)

[logger_keylime]
level = INFO
qualname = keylime
handlers =
""",
        }
        for name, text in files.items():
            path = conf / f"{name}.conf"
            path.write_text(text)
            self.env[f"KEYLIME_{name.upper()}_CONFIG"] = str(path)
        (self.kl_dir / "tpm_cert_store").mkdir()
        # Keylime imports the GnuPG bindings (keylime/signing.py), which are not on PyPI
        # (they must match the system's gpgme); it uses them only for GPG-signed policies,
        # which this demo does not use. An empty module stands in for them.
        stub = self.work / "pystub"
        stub.mkdir()
        (stub / "gpg.py").write_text('"""Stand-in for the GnuPG bindings (unused here)."""\n')
        self.env["PYTHONPATH"] = str(stub)

    def start_keylime(self) -> None:
        for tool in ("keylime_verifier", "keylime_registrar", "keylime_tenant"):
            if not (KEYLIME_BIN / tool).exists():
                raise MissingToolError(f"{KEYLIME_BIN / tool} is missing: run `make keylime`")
        verifier = self.spawn("verifier", KEYLIME_BIN / "keylime_verifier")
        wait_port(self.verifier_port, min(90, self.left()), verifier)
        registrar = self.spawn("registrar", KEYLIME_BIN / "keylime_registrar")
        wait_port(self.registrar_port, min(90, self.left()), registrar)
        wait_port(self.registrar_tls_port, min(30, self.left()), registrar)
        ca = self.kl_dir / "cv_ca"
        self.client_ctx = ssl.create_default_context(cafile=str(ca / "cacert.crt"))
        self.client_ctx.check_hostname = False
        self.client_ctx.load_cert_chain(ca / "client-cert.crt", ca / "client-private.pem")

    def verifier_status(self) -> dict[str, Any]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.verifier_port, context=self.client_ctx, timeout=30
        )
        try:
            conn.request("GET", f"/v{API}/agents/{UUID}")
            resp = conn.getresponse()
            doc = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if resp.status != 200:
            raise StepError(f"verifier: GET agent status: HTTP {resp.status} {doc}")
        results: dict[str, Any] = doc.get("results", {})
        return results.get(UUID, results)

    def wait_status(self, what: str, timeout: float, done: Any) -> dict[str, Any]:
        deadline = time.monotonic() + min(timeout, max(self.left(), 1))
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.verifier_status()
            if done(last):
                return last
            time.sleep(0.5)
        raise StepError(f"{what}: not seen; the verifier's last status: {json.dumps(last)}")

    def tenant(self, *args: str) -> str:
        return self.run(KEYLIME_BIN / "keylime_tenant", *args, timeout=180)

    # -- imaguard --------------------------------------------------------------------------
    def measure(self, *paths: Path) -> str:
        return self.run(IMAGUARD, "measure", "--state", self.state, "--tpm", self.tcti, *paths)

    def program(self, name: str, body: str) -> Path:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
        return path

    def agent_config(self) -> Path:
        self.agent_port = free_port()
        path = self.work / "agent.toml"
        path.write_text(
            f'uuid = "{UUID}"\n'
            f'registrar = "127.0.0.1:{self.registrar_port}"\n'
            f'listen = "127.0.0.1:{self.agent_port}"\n'
            f'tpm = "{self.tcti}"\n'
            f'state = "{self.state}"\n'
            "[tls]\n"
            f'cert = "{self.work / "agent" / "server-cert.pem"}"\n'
            f'key = "{self.work / "agent" / "server-key.pem"}"\n'
            f'ca = "{self.kl_dir / "cv_ca" / "cacert.crt"}"\n'
        )
        return path

    def start_agent(self, config: Path) -> None:
        proc = self.spawn("agent", IMAGUARD, "-v", "agent", "--config", config)
        wait_port(self.agent_port, min(60, self.left()), proc)

    # -- the sequence ----------------------------------------------------------------------
    def sequence(self) -> None:
        step = 0

        def begin(text: str) -> None:
            nonlocal step
            step += 1
            say(f"[{step}] {text}")

        begin("swtpm, and imaguard's log of two programs in it")
        self.start_swtpm()
        self.bin.mkdir()
        hello = self.program("hello", "echo hello")
        backup = self.program("backup", "tar cf /dev/null /etc")
        self.measure(hello, backup)
        say(f"    TPM {self.tcti}; log {self.state}")

        begin("imaguard policy runtime: a Keylime runtime policy from the log")
        policy = self.work / "policy.json"
        self.run(
            IMAGUARD, "policy", "runtime", "--from-log",
            self.state / "binary_runtime_measurements", "-o", policy,
        )  # fmt: skip
        digests = json.loads(policy.read_text())["digests"]
        say(f"    {policy}: {len(digests)} paths")

        begin("Keylime's verifier and registrar (PyPI keylime, sqlite, 127.0.0.1)")
        self.keylime_configs()
        self.start_keylime()
        say(f"    verifier :{self.verifier_port}, registrar :{self.registrar_port}")

        begin("imaguard agent: register with the registrar and activate the AK")
        config = self.agent_config()
        self.start_agent(config)
        if "activated" not in self.log_text("agent"):
            raise StepError("the agent did not report its activation:\n" + self.log_text("agent"))
        say(f"    agent {UUID} on :{self.agent_port}")

        begin("keylime_tenant -c add, with the runtime policy")
        self.tenant("-c", "add", "-u", UUID, "--runtime-policy", str(policy))

        begin("the verifier attests the agent, several rounds")
        st = self.wait_status(
            "three attestations",
            120,
            lambda s: s.get("operational_state") == 3 and (s.get("attestation_count") or 0) >= 3,
        )
        say(f"    attested {st['attestation_count']} times (state {st['operational_state']})")

        begin("the agent restarts (same TPM, same log): attestation goes on")
        self.stop("agent")
        count = int(self.verifier_status().get("attestation_count") or 0)
        self.start_agent(config)
        st = self.wait_status(
            "attestation after the restart",
            120,
            lambda s: (
                s.get("operational_state") == 3 and (s.get("attestation_count") or 0) >= count + 3
            ),
        )
        say(f"    attested {st['attestation_count']} times")

        begin("an unlisted program is measured: the verifier marks the agent failed")
        intruder = self.program("intruder", "echo not in the policy")
        self.measure(intruder)
        st = self.wait_status(
            "the failure", 120, lambda s: s.get("operational_state") in (7, 9, 10)
        )
        named = [
            line
            for line in self.log_text("verifier").splitlines()
            if str(intruder) in line and "allowlist" in line.lower()
        ]
        if not named:
            raise StepError(f"the verifier failed the agent without naming {intruder}: {st}")
        say(f"    state {st['operational_state']}, event {st.get('last_event_id')}")
        say(f"    verifier: {named[0].split(' - ')[-1]}")

        begin("re-added with a policy listing it; then the TPM is reset, the log kept")
        policy2 = self.work / "policy2.json"
        self.run(
            IMAGUARD, "policy", "runtime", "--from-log",
            self.state / "binary_runtime_measurements", "-o", policy2,
        )  # fmt: skip
        self.tenant("-c", "delete", "-u", UUID)
        self.tenant("-c", "add", "-u", UUID, "--runtime-policy", str(policy2))
        self.wait_status(
            "attestation with the new policy",
            120,
            lambda s: s.get("operational_state") == 3 and (s.get("attestation_count") or 0) >= 2,
        )
        self.reset_tpm()
        st = self.wait_status(
            "the TPM reset detected", 120, lambda s: s.get("operational_state") in (7, 9, 10)
        )
        say(f"    state {st['operational_state']}, event {st.get('last_event_id')}")
        say("all steps seen: the agent attests, survives a restart, and fails when it must")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="keep everything here (default: a temporary directory)")
    ap.add_argument("--deadline", type=float, default=600, help="seconds for the whole run")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the commands' output")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = Path(args.workdir).resolve()
            work.mkdir(parents=True, exist_ok=False)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="attest-demo-")))
        demo = Demo(work, time.monotonic() + args.deadline, args.verbose)
        try:
            demo.sequence()
        except MissingToolError as e:
            say(f"MISSING: {e}")
            return 2
        except StepError as e:
            say(f"FAILED: {e}")
            for name in ("agent", "verifier", "registrar"):
                tail = demo.log_text(name).splitlines()[-25:]
                if tail:
                    say(f"--- {name} log (last lines) ---\n" + "\n".join(tail))
            return 1
        finally:
            demo.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
