"""Fixtures for the measurement-log tests: the imaguard command, one swtpm, evmctl, Keylime.

Nothing is mocked. The outside tools are independent oracles (evmctl ima_measurement,
Keylime's own measurement-list code). When swtpm or Keylime's venv (.venv-keylime) is
missing, the tests that need it skip with the reason and the command that installs it;
``make test`` installs both and sets IMAGUARD_REQUIRE_ORACLES=1, so there a missing one
fails instead.

swtpm: ONE software TPM per test session, on two consecutive free
loopback ports P (commands) and P+1 (control; tpm2-tss's swtpm TCTI insists on P+1),
bound to 127.0.0.1 only, started with ``--daemon --pid file=...`` and killed by that PID
at the end of the session. The function-scoped ``tpm`` fixture resets it (CMD_INIT on the
control socket, then TPM2_Startup(CLEAR) on the command socket): every test that uses it
starts from power-on PCRs and a new TPM reset count.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import oracle_missing

TIMEOUT = 60
"""Seconds any one outside command may take."""
ROOT = Path(__file__).resolve().parents[2]
IMAGUARD = Path(sys.executable).with_name("imaguard")
KEYLIME_RUNNER = ROOT / "scripts" / "keylime-check"
KEYLIME_PYTHON = Path(
    os.environ.get("IMAGUARD_KEYLIME_PYTHON") or ROOT / ".venv-keylime" / "bin" / "python"
)
BANK_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

# -- running commands -------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One finished command."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def explain(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n"
            f"stdout: {self.stdout[:3000]!r}\nstderr: {self.stderr[-3000:]}"
        )


def run(
    *args: str | bytes | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Run:
    """Run a command with a timeout; a missing tool or a hang fails the test."""
    argv = tuple(os.fsdecode(a) for a in args)
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.run(
            [os.fsencode(a) for a in args],
            capture_output=True,
            timeout=timeout,
            check=False,
            env=full_env,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as e:
        pytest.fail(f"{argv[0]} is not installed ({e}); `make test` installs it (make deps)")
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(argv)} took more than {timeout} s: {e}")
    return Run(argv, proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


def imaguard(
    *args: str | bytes | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Run:
    """The installed ``imaguard`` command; never a traceback, whatever the outcome."""
    r = run(IMAGUARD, *args, env=env, timeout=timeout)
    assert "Traceback" not in r.stderr, r.explain()
    assert b"Traceback" not in r.stdout, r.explain()
    return r


def imaguard_ok(*args: str | bytes | os.PathLike[str], **kw: object) -> Run:
    r = imaguard(*args, **kw)  # type: ignore[arg-type]
    assert r.returncode == 0, r.explain()
    return r


def log_pcrs(state: Path) -> dict[str, dict[str, str]]:
    """``imaguard log pcrs --state DIR --json``."""
    doc: dict[str, dict[str, str]] = json.loads(
        imaguard_ok("log", "pcrs", "--state", state, "--json").stdout
    )
    return doc


def verify_json(*args: str | os.PathLike[str]) -> tuple[int, dict[str, object]]:
    """``imaguard log verify ... --json``: (exit code, the JSON document)."""
    r = imaguard("log", "verify", *args, "--json")
    assert r.returncode in (0, 1), r.explain()
    doc = json.loads(r.stdout)
    assert doc["valid"] is (r.returncode == 0), r.explain()
    return r.returncode, doc


def findings_of(doc: Mapping[str, object]) -> list[dict[str, Any]]:
    """The ``findings`` list of a ``log verify --json`` document."""
    findings = doc["findings"]
    assert isinstance(findings, list)
    return findings


def finding_codes(doc: Mapping[str, object]) -> set[str]:
    return {f["code"] for f in findings_of(doc)}


def content_for(label: str, size: int) -> bytes:
    """Deterministic content of ``size`` bytes (differs per label)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{label}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def pcr_file(path: Path, bank: str, values: Mapping[int, str]) -> Path:
    """An evmctl ``--pcrs`` file: ``PCR-00: <hex>`` ... ``PCR-23: <hex>``, in order (evmctl.c).

    PCRs not given hold their power-on value (zeros).
    """
    zero = "00" * BANK_SIZES[bank]
    lines = [f"PCR-{i:02d}: {values.get(i, zero)}" for i in range(24)]
    path.write_text("\n".join(lines) + "\n")
    return path


def pcr_files_from_json(
    directory: Path,
    pcrs: Mapping[str, Mapping[str, str]],
    banks: tuple[str, ...] = ("sha1", "sha256"),
) -> list[str]:
    """``--pcrs sha1,F --pcrs sha256,F`` arguments from ``log pcrs --json`` output."""
    args: list[str] = []
    for bank in banks:
        values = {int(i): v for i, v in pcrs[bank].items()}
        f = pcr_file(directory / f"pcrs-{bank}.txt", bank, values)
        args += ["--pcrs", f"{bank},{f}"]
    return args


# -- an independent replay -------------------------------------------------------------

IMA_EVENT_NAME_LEN_MAX = 255
"""The kernel pads the ``n`` field of the old ``ima`` template to 256 bytes when hashing."""


def replay_binary(
    data: bytes, banks: tuple[str, ...] = ("sha1", "sha256")
) -> dict[str, dict[int, bytes]]:
    """The PCRs a binary measurement list (little-endian, as on x86) replays to, computed
    here from the kernel's rules and hashlib alone, not with imaguard's own code:

    - record: pcr u32, sha1 template digest [20], name len u32, name, then (except for the
      ``ima`` template) template data len u32 and the data (ima_measurements_show,
      security/integrity/ima/ima_fs.c);
    - the bank's template digest hashes each field as u32 length + bytes, which is the
      template data itself; for ``ima`` it hashes ``d`` then ``n`` zero-padded to 256 bytes
      (ima_calc_field_array_hash_tfm, ima_crypto.c);
    - PCR_new = H(PCR_old || template digest), from zeros; a violation (sha1 digest all
      zero) extends all 0xff bytes instead (ima_add_template_entry, ima_queue.c).
    """
    pcrs: dict[str, dict[int, bytes]] = {b: {} for b in banks}
    off = 0
    while off < len(data):
        pcr, sha1_digest, name_len = struct.unpack_from("<I20sI", data, off)
        off += 28
        name = data[off : off + name_len]
        off += name_len
        if name == b"ima":
            d = data[off : off + 20]
            (n_len,) = struct.unpack_from("<I", data, off + 20)
            n = data[off + 24 : off + 24 + n_len]
            off += 24 + n_len
            hashed = d + n.ljust(IMA_EVENT_NAME_LEN_MAX + 1, b"\0")
        else:
            (data_len,) = struct.unpack_from("<I", data, off)
            hashed = data[off + 4 : off + 4 + data_len]
            off += 4 + data_len
        violation = sha1_digest == bytes(20)
        if not violation:
            assert hashlib.sha1(hashed).digest() == sha1_digest  # noqa: S324
        for bank in banks:
            size = hashlib.new(bank).digest_size
            extend = b"\xff" * size if violation else hashlib.new(bank, hashed).digest()
            old = pcrs[bank].get(pcr, bytes(size))
            pcrs[bank][pcr] = hashlib.new(bank, old + extend).digest()
    assert off == len(data), "a truncated record"
    return pcrs


# -- evmctl -----------------------------------------------------------------------------

EVMCTL_MATCHED = "Matched per TPM bank calculated digest(s)."
EVMCTL_BAD = ("verification failed", "unknown keyid", "Failed to verify template data digest")


def evmctl_measurement(log: Path, *args: str, env: Mapping[str, str] | None = None) -> Run:
    """``evmctl -v ima_measurement [ARGS] LOG``."""
    if shutil.which("evmctl") is None:
        pytest.fail("evmctl is missing: `make deps` (apt-get install ima-evm-utils)")
    return run("evmctl", "-v", "ima_measurement", *args, log, env=env)


def evmctl_accepts(r: Run) -> bool:
    """The verdict rule (evmctl 1.4 and 1.6.2, observed): exit code AND stderr."""
    return (
        r.returncode == 0
        and EVMCTL_MATCHED in r.stderr
        and not any(bad in r.stderr for bad in EVMCTL_BAD)
    )


# -- swtpm ------------------------------------------------------------------------------

TPM_ALG = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}


def _free_port_pair() -> int:
    """A port P such that P and P+1 are both free on 127.0.0.1 (checked by binding)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port: int = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free loopback ports")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _set_child_subreaper(on: bool) -> None:
    """Make daemons started meanwhile our children, so that we can reap them after the
    kill (PID 1 of a container may never reap them: zombies would pile up)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1 if on else 0, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("swtpm closed the connection")
        out += chunk
    return out


class Swtpm:
    """One swtpm daemon on 127.0.0.1:P (commands) and P+1 (control), stopped by its PID."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = 0
        self.pid: int | None = None

    @property
    def ctrl_port(self) -> int:
        return self.port + 1

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def tools_env(self) -> dict[str, str]:
        """tpm2-tools talk to it through TPM2TOOLS_TCTI."""
        return {"TPM2TOOLS_TCTI": self.tcti}

    @property
    def tss_env(self) -> dict[str, str]:
        """The IBM TSS (tsspcrread, hence evmctl) talk to it through these (socsim)."""
        return {
            "TPM_INTERFACE_TYPE": "socsim",
            "TPM_SERVER_TYPE": "raw",
            "TPM_SERVER_NAME": "127.0.0.1",
            "TPM_COMMAND_PORT": str(self.port),
            "TPM_PLATFORM_PORT": str(self.ctrl_port),
        }

    def start(self) -> None:
        if shutil.which("swtpm") is None:
            oracle_missing("swtpm is not installed: `make deps` (apt-get install swtpm)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.state_dir / "swtpm.pid"
        last = ""
        for _ in range(5):
            self.port = _free_port_pair()
            _set_child_subreaper(True)
            try:
                r = run(
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={self.state_dir}",
                    "--server",
                    f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                    "--ctrl",
                    f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1",
                    "--flags",
                    "not-need-init,startup-clear",
                    "--pid",
                    f"file={pid_file}",
                    "--log",
                    f"file={self.state_dir / 'swtpm.log'}",
                    "--daemon",
                    timeout=20,
                )
            finally:
                _set_child_subreaper(False)
            if r.returncode != 0:
                last = r.explain()
                continue  # most likely a port taken between the check and the start
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError, ValueError):
                    self.pid = int(pid_file.read_text().strip())
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        pass
                    return
                time.sleep(0.02)
            last = f"swtpm did not answer on port {self.port}"
            self.stop()
        pytest.fail(f"cannot start swtpm: {last}")

    def stop(self, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
        """Kill the daemon by its PID (SIGTERM takes 1-2 s: it notices on a poll timeout)."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        if not _pid_alive(pid):
            _reap(pid)
            return
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        if b"swtpm" not in cmdline or os.fsencode(self.state_dir) not in cmdline:
            return  # the PID was reused by something else: never kill that
        os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        _reap(pid)

    # -- raw TPM2 over the sockets (TCG TPM 2.0 Library, Part 3) ----------------------

    def _command(self, cmd: bytes) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(cmd)
            head = _recv_exact(s, 10)
            _tag, size, rc = struct.unpack(">HII", head)
            return rc, _recv_exact(s, size - 10)

    def reset(self) -> None:
        """Back to power-on PCRs: CMD_INIT on the control port, then TPM2_Startup(CLEAR)."""
        with socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=10) as s:
            s.sendall(struct.pack(">II", 2, 0))
            (result,) = struct.unpack(">I", _recv_exact(s, 4))
        assert result == 0, f"swtpm CMD_INIT failed: {result:#x}"
        rc, _ = self._command(struct.pack(">HIIH", 0x8001, 12, 0x144, 0))
        assert rc in (0, 0x100), f"TPM2_Startup failed: {rc:#x}"

    # -- tpm2-tools (the independent view of the TPM) ----------------------------------

    def pcrread(self, spec: str = "sha1:10+sha256:10") -> dict[str, dict[int, str]]:
        """``tpm2_pcrread SPEC``: bank -> PCR -> lowercase hex."""
        r = run("tpm2_pcrread", spec, env=self.tools_env, timeout=30)
        assert r.returncode == 0, r.explain()
        out: dict[str, dict[int, str]] = {}
        bank = None
        for line in r.out.splitlines():
            m = re.match(r"^\s*(sha\d+)\s*:\s*$", line)
            if m:
                bank = m.group(1)
                out[bank] = {}
                continue
            m = re.match(r"^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$", line)
            if m and bank is not None:
                out[bank][int(m.group(1))] = m.group(2).lower()
        return out

    def pcrextend(self, pcr: int, values: Mapping[str, str]) -> None:
        """``tpm2_pcrextend PCR:bank=hex,...`` (someone other than imaguard extends)."""
        spec = f"{pcr}:" + ",".join(f"{b}={v}" for b, v in values.items())
        r = run("tpm2_pcrextend", spec, env=self.tools_env, timeout=30)
        assert r.returncode == 0, r.explain()


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    """The session's one swtpm (killed by PID at the end)."""
    tpm = Swtpm(tmp_path_factory.mktemp("swtpm"))
    try:
        tpm.start()
        yield tpm
    finally:
        tpm.stop()


@pytest.fixture
def tpm(swtpm: Swtpm) -> Swtpm:
    """The session's swtpm, reset to power-on PCRs for this test."""
    if swtpm.pid is None or not _pid_alive(swtpm.pid):
        pytest.fail("the session's swtpm is gone")
    swtpm.reset()
    return swtpm


@pytest.fixture
def second_swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    """A short-lived swtpm of this test's own (the test may kill it); killed by PID after."""
    tpm = Swtpm(tmp_path / "swtpm2")
    try:
        tpm.start()
        yield tpm
    finally:
        tpm.stop(signal.SIGKILL)


# -- Keylime ----------------------------------------------------------------------------

KEYLIME_EVENTS = {
    "not_in_allowlist": "ima.validation.ima-ng.not_in_allowlist",
    "runtime_policy_hash": "ima.validation.ima-ng.runtime_policy_hash",
    "ima_hash": "ima.validation.ima_hash",
    "pcr_mismatch": "ima.pcr_mismatch",
    "parser": "ima.parser.entry",
}


class Keylime:
    """Keylime 7.14.3's own ``process_measurement_list``, offline (scripts/keylime-check)."""

    def __init__(self, python: Path) -> None:
        self.python = python

    def check(
        self, log: Path, policy: Path, pcrs: Mapping[str, str] | None = None
    ) -> dict[str, dict[str, object]]:
        """bank -> {"running": hex, "events": [event ids]} for sha1 and sha256."""
        args = [f"--pcr={b}={v}" for b, v in (pcrs or {}).items()]
        r = run(self.python, KEYLIME_RUNNER, log, policy, *args, "--json", timeout=60)
        assert r.returncode in (0, 1), r.explain()  # 1: Keylime reported failure events
        lines = [line for line in r.out.splitlines() if line.startswith("{")]
        assert lines, r.explain()
        banks: dict[str, dict[str, object]] = json.loads(lines[-1])["banks"]
        return banks


@pytest.fixture(scope="session")
def keylime() -> Keylime:
    if not KEYLIME_PYTHON.exists():
        oracle_missing(
            f"Keylime's venv is missing ({KEYLIME_PYTHON}): run `make keylime` "
            "(or point IMAGUARD_KEYLIME_PYTHON at a python with keylime==7.14.3)"
        )
    probe = (
        "import sys, types; sys.modules['gpg'] = types.ModuleType('gpg'); import keylime.ima.ima"
    )
    r = run(KEYLIME_PYTHON, "-c", probe, timeout=60)
    if r.returncode != 0:
        pytest.fail(f"Keylime cannot be imported; run `make keylime`:\n{r.explain()}")
    return Keylime(KEYLIME_PYTHON)
