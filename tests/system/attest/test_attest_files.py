"""The agent's configuration file, the IMA list it serves from imaguard's log, and the
``imaguard agent`` command's refusals (no TPM needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.measure import imaguard
from imaguard.attest import ImaList, load_config
from imaguard.errors import Error, UsageError
from imaguard.formats.measurelist import parse_binary, serialize_ascii
from imaguard.formats.template import TemplateDescriptor
from imaguard.measure import LogStore, file_entry

GOOD = """\
uuid = "host-1"
registrar = "10.0.0.5:8890"
listen = "[::1]:9002"
tpm = "device:/dev/tpmrm0"
state = "state"
bank = "sha384"
[tls]
cert = "tls/cert.pem"
key = "/etc/agent/key.pem"
ca = "ca.pem"
"""


def test_config_is_read_with_paths_relative_to_it(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(GOOD)
    c = load_config(f)
    assert c.uuid == "host-1"
    assert c.registrar == ("10.0.0.5", 8890)
    assert c.listen == ("::1", 9002)
    assert c.tpm == "device:/dev/tpmrm0"
    assert c.state == tmp_path / "state"
    assert c.tls_cert == tmp_path / "tls" / "cert.pem"
    assert c.tls_key == Path("/etc/agent/key.pem")
    assert c.tls_ca == tmp_path / "ca.pem"
    assert c.bank == "sha384"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (('uuid = "host-1"', 'uuid = "a b"'), "uuid 'a b'"),
        (('uuid = "host-1"\n', ""), "'uuid' is required"),
        (('registrar = "10.0.0.5:8890"', 'registrar = "10.0.0.5"'), "registrar: '10.0.0.5'"),
        (('registrar = "10.0.0.5:8890"', "registrar = 8890"), "registrar: must be a string"),
        (('listen = "[::1]:9002"', 'listen = "h:70000"'), "listen: 'h:70000'"),
        (('bank = "sha384"', 'bank = "md5"'), "bank 'md5'"),
        (('bank = "sha384"', 'colour = "blue"'), "unknown key(s) colour"),
        (('ca = "ca.pem"', 'ca = "ca.pem"\ncrl = "x"'), "unknown key(s) in [tls]: crl"),
        (('ca = "ca.pem"', ""), "[tls]: 'ca' is required"),
        (("uuid = ", "uuid = = "), "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, change: tuple[str, str], says: str) -> None:
    f = tmp_path / "agent.toml"
    assert change[0] in GOOD
    f.write_text(GOOD.replace(change[0], change[1]))
    with pytest.raises(UsageError) as e:
        load_config(f)
    assert str(f) in str(e.value)
    assert says in str(e.value)


def test_missing_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the agent configuration"):
        load_config(tmp_path / "none.toml")
    f = tmp_path / "agent.toml"
    f.write_text(GOOD.split("[tls]")[0] + "tls = 1\n")
    with pytest.raises(UsageError, match=r"a \[tls\] table with cert, key and ca is required"):
        load_config(f)


def _log(state: Path, tmp_path: Path, names: list[str], template: str = "ima-ng") -> None:
    desc = TemplateDescriptor.lookup(template)
    with LogStore(state, template=template) as log:
        for name in names:
            p = tmp_path / name
            p.write_text(name)
            log.append(file_entry(p, desc))


@pytest.mark.parametrize("template", ["ima-ng", "ima-sig", "ima"])
def test_ima_list_is_the_kernels_ascii_list(tmp_path: Path, template: str) -> None:
    state = tmp_path / "state"
    _log(state, tmp_path, ["a", "b"], template)
    data = (state / "binary_runtime_measurements").read_bytes()
    expected = serialize_ascii([r.entry for r in parse_binary(data)]).decode()
    ima = ImaList(state)
    got = ima.read(0)
    assert (got.text, got.start, got.total) == (expected, 0, 3)
    assert ima.read(1).text == "".join(expected.splitlines(keepends=True)[1:])


def test_ima_list_grows_skips_a_torn_tail_and_follows_a_new_log(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ima = ImaList(state)
    assert (ima.read(0).text, ima.read(0).total) == ("", 0)  # no log yet
    _log(state, tmp_path, ["a"])
    assert ima.read(0).total == 2
    _log(state, tmp_path, ["b", "c"])
    grown = ima.read(2)
    assert (grown.start, grown.total) == (2, 4)
    assert grown.text.splitlines()[0].endswith(str(tmp_path / "b"))
    # A record being written (cut short) is not served; the whole one is, once there.
    log_file = state / "binary_runtime_measurements"
    data = log_file.read_bytes()
    last = len(data) - len(data) // 4  # somewhere inside the last record
    with open(log_file, "r+b") as f:
        f.truncate(last)
    fresh = ImaList(state)
    assert fresh.read(0).total == 3
    with open(log_file, "ab") as f:
        f.write(data[last:])
    assert fresh.read(0).total == 4
    # A new log (the file replaced, a smaller one): read from its start.
    os.replace(log_file, tmp_path / "old")
    state2 = tmp_path / "state2"
    _log(state2, tmp_path, ["x"])
    os.replace(state2 / "binary_runtime_measurements", log_file)
    renewed = ima.read(3)
    assert (renewed.start, renewed.total) == (0, 2)
    assert renewed.text.splitlines()[1].endswith(str(tmp_path / "x"))


def test_unreadable_log_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "binary_runtime_measurements").mkdir(parents=True)
    with pytest.raises(Error, match="cannot read the measurement log"):
        ImaList(state).read(0)


def test_agent_command_refuses_a_bad_config(tmp_path: Path) -> None:
    r = imaguard("agent", "--config", tmp_path / "none.toml")
    assert r.returncode != 0
    assert "cannot read the agent configuration" in r.stderr
    bad = tmp_path / "agent.toml"
    text = GOOD.replace("device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=1")
    bad.write_text(text.replace("/etc/agent/key.pem", "tls/key.pem"))
    (tmp_path / "ca.pem").write_text("not a CA")
    r = imaguard("agent", "--config", bad)
    assert r.returncode != 0
    assert "ca.pem: not a PEM CA certificate file" in r.stderr


def test_attest_imports_no_higher_layer() -> None:
    """docs/architecture.md: attest sits on measure; it never imports core, enforce,
    service, loaders, digestlists or the CLI."""
    import ast

    import imaguard.attest

    higher = ("core", "enforce", "service", "loaders", "digestlists", "cli")
    for path in Path(imaguard.attest.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                assert not (parts[0] == "imaguard" and len(parts) > 1 and parts[1] in higher), (
                    f"{path.name} imports {name}"
                )
