"""``imaguard digestlist`` and ``imaguard trust lookup``; the apt hook.

make/sign/verify/show and ``trust lookup --list`` run offline. add/remove/list and
``trust lookup`` without ``--list`` talk to a stand-in daemon: an in-process ControlServer
whose handler answers the four trust-database operations from a real TrustDB
(``digestlist_add``, ``digestlist_remove``, ``trust_lookup``, ``digestlists``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import imaguard
from helpers.clirun import run_in_process
from imaguard.digestlists import TrustDB
from imaguard.errors import FormatError, UsageError, VerificationError
from imaguard.formats import digestlist as dlf
from imaguard.service import ControlServer, Peer, ProtocolError, Reply

Capsys = pytest.CaptureFixture[str]
ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "scripts" / "apt-digestlist-hook"
IMAGUARD = Path(sys.executable).with_name("imaguard")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (root / "bin" / "other").write_bytes(b"#!/bin/sh\necho other\n")
    (root / "README").write_bytes(b"read me\n")
    return root


@pytest.fixture
def made(tmp_path: Path, tree: Path, capsys: Capsys) -> Path:
    out = tmp_path / "app.list"
    code, stdout, err = run_in_process(capsys, "digestlist", "make", "--tree", tree, "-o", out)
    assert (code, err) == (0, "")
    assert f"{out}: 3 sha256 digests from 'tree:{tree}' (3 files hashed)" in stdout
    return out


@pytest.fixture
def signed(made: Path, rsa_dir: Path, capsys: Capsys) -> Path:
    code, out, _ = run_in_process(
        capsys, "digestlist", "sign", "--key", rsa_dir / "private.pem", made
    )
    assert code == 0
    assert f"{made}: signed (key id " in out
    return made


def verify(capsys: Capsys, keyring: Path, *lists: Path) -> tuple[int, str, str]:
    return run_in_process(capsys, "digestlist", "verify", "--keyring", keyring, *lists)


# -- make -------------------------------------------------------------------------------------
def test_make_tree_writes_a_parseable_list(made: Path, tree: Path) -> None:
    dl = dlf.parse(made.read_bytes())
    assert len(dl) == 3
    assert dl.paths is not None
    assert str(tree / "bin" / "tool") in dl.paths
    assert bytes.fromhex(sha256(b"read me\n")) in dl


def test_make_options(tmp_path: Path, tree: Path, capsys: Capsys) -> None:
    out = tmp_path / "l"
    code, _, _ = run_in_process(
        capsys,
        "digestlist",
        "make",
        "--tree",
        tree,
        "-a",
        "sha512",
        "--no-paths",
        "--source",
        "my app 1.0",
        "-o",
        out,
    )
    assert code == 0
    dl = dlf.parse(out.read_bytes())
    assert (dl.algorithm.name, dl.paths, dl.source) == ("sha512", None, "my app 1.0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give exactly one of"),
        (("--tree", "x", "--dpkg"), "not --tree and --dpkg"),
        (("--tree", "x", "stray"), "unexpected arguments 'stray'"),
        (("--tree", "x", "--root", "/srv"), "--root goes with --dpkg"),
        (("--tree", "x", "--source", "s" * 5000), "source is longer"),
    ],
)
def test_make_usage_errors(
    tmp_path: Path, tree: Path, capsys: Capsys, args: tuple[str, ...], message: str
) -> None:
    args = tuple(str(tree) if a == "x" else a for a in args)
    code, _, err = run_in_process(capsys, "digestlist", "make", *args, "-o", tmp_path / "l")
    assert code == 2
    assert message in err
    assert not (tmp_path / "l").exists()


def test_make_replaces_the_stale_detached_signature(
    made: Path, tree: Path, rsa_dir: Path, capsys: Capsys
) -> None:
    run_in_process(
        capsys, "digestlist", "sign", "--detached", "--key", rsa_dir / "private.pem", made
    )
    assert Path(f"{made}.sig").exists()
    code, _, err = run_in_process(capsys, "digestlist", "make", "--tree", tree, "-o", made)
    assert code == 0
    assert "removed (it signed the list that was there before)" in err
    assert not Path(f"{made}.sig").exists()


@pytest.mark.skipif(not os.path.exists("/var/lib/dpkg/status"), reason="no dpkg database")
def test_make_dpkg(tmp_path: Path, capsys: Capsys) -> None:
    out = tmp_path / "c.list"
    code, stdout, _ = run_in_process(
        capsys, "digestlist", "make", "--dpkg", "coreutils", "hostname", "-o", out
    )
    assert "sha256 digests from 'dpkg:coreutils=" in stdout
    assert code == 0
    dl = dlf.parse(out.read_bytes())
    assert dl.source.startswith("dpkg:coreutils=")
    assert bytes.fromhex(sha256(Path("/bin/hostname").read_bytes())) in dl
    code, _, err = run_in_process(
        capsys, "digestlist", "make", "--dpkg", "no-such-package-xyz", "-o", out
    )
    assert code == 2
    assert "package 'no-such-package-xyz' is not installed" in err


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
def test_make_deb(tmp_path: Path, capsys: Capsys) -> None:
    deb = build_deb(tmp_path, "cli-test", "3.0")
    deb2 = build_deb(tmp_path, "cli-test-two", "1")
    out = tmp_path / "d.list"
    code, _, _ = run_in_process(capsys, "digestlist", "make", "--deb", deb, deb2, "-o", out)
    assert code == 0
    dl = dlf.parse(out.read_bytes())
    assert dl.source == "deb:cli-test=3.0,cli-test-two=1"
    assert dl.paths is not None
    assert "/usr/bin/cli-test" in dl.paths
    bad = tmp_path / "bad.deb"
    bad.write_text("not a package")
    code, _, err = run_in_process(capsys, "digestlist", "make", "--deb", bad, "-o", out)
    assert code == 2
    assert f"{bad}: not a Debian package" in err


def test_make_runtime_policy(tmp_path: Path, capsys: Capsys) -> None:
    from imaguard.formats.keylime import RuntimePolicy

    policy = tmp_path / "policy.json"
    policy.write_text(RuntimePolicy(digests={"/usr/bin/x": (sha256(b"x"),)}).serialize())
    out = tmp_path / "k.list"
    code, _, _ = run_in_process(capsys, "digestlist", "make", "--runtime-policy", policy, "-o", out)
    assert code == 0
    dl = dlf.parse(out.read_bytes())
    assert dl.digests == (hashlib.sha256(b"x").digest(),)
    assert dl.source == "keylime:policy.json"


# -- sign, verify, show -----------------------------------------------------------------------
def test_sign_then_verify(signed: Path, rsa_dir: Path, capsys: Capsys) -> None:
    code, out, err = verify(capsys, rsa_dir, signed)
    assert (code, err) == (0, "")
    assert f"{signed}: valid: 3 sha256 digests" in out
    assert "appended" in out
    body, value = dlf.split_signature(signed.read_bytes())
    assert value is not None
    dlf.parse(body)


def test_verify_with_the_wrong_key_fails(signed: Path, ec_dir: Path, capsys: Capsys) -> None:
    code, out, _ = verify(capsys, ec_dir, signed)
    assert code == 1
    assert "INVALID" in out


def test_tampered_list_exits_1(signed: Path, rsa_dir: Path, capsys: Capsys) -> None:
    data = bytearray(signed.read_bytes())
    data[31] ^= 0x01  # the created timestamp: still well-formed, no longer what was signed
    signed.write_bytes(bytes(data))
    code, out, _ = verify(capsys, rsa_dir, signed)
    assert code == 1
    assert "signature does not verify" in out


def test_truncated_list_exits_2(signed: Path, rsa_dir: Path, capsys: Capsys) -> None:
    signed.write_bytes(signed.read_bytes()[:60])
    code, _, err = verify(capsys, rsa_dir, signed)
    assert code == 2
    assert f"{signed}: malformed digest list" in err


def test_unsigned_list_exits_1(made: Path, rsa_dir: Path, capsys: Capsys) -> None:
    code, out, _ = verify(capsys, rsa_dir, made)
    assert code == 1
    assert "not signed" in out


def test_verify_several_reports_the_worst(
    signed: Path, made: Path, tmp_path: Path, rsa_dir: Path, capsys: Capsys
) -> None:
    code, _, _ = verify(capsys, rsa_dir, signed, tmp_path / "absent.list")
    assert code == 2


def test_detached_signature(made: Path, rsa_dir: Path, capsys: Capsys) -> None:
    before = made.read_bytes()
    code, out, _ = run_in_process(
        capsys, "digestlist", "sign", "--detached", "--key", rsa_dir / "private.pem", made
    )
    assert code == 0
    assert made.read_bytes() == before
    assert Path(f"{made}.sig").exists()
    code, out, _ = verify(capsys, rsa_dir, made)
    assert code == 0
    assert "detached" in out
    Path(f"{made}.sig").write_bytes(b"\x03garbage")
    code, _, _ = verify(capsys, rsa_dir, made)
    assert code == 1


def test_detached_refused_on_an_appended_list(signed: Path, rsa_dir: Path, capsys: Capsys) -> None:
    code, _, err = run_in_process(
        capsys, "digestlist", "sign", "--detached", "--key", rsa_dir / "private.pem", signed
    )
    assert code == 2
    assert "carries an appended signature" in err


def test_sign_refuses_a_malformed_list(tmp_path: Path, rsa_dir: Path, capsys: Capsys) -> None:
    bad = tmp_path / "bad.list"
    bad.write_bytes(b"IGDLIST\0")
    code, _, err = run_in_process(
        capsys, "digestlist", "sign", "--key", rsa_dir / "private.pem", bad
    )
    assert code == 2
    assert f"{bad}: not a well-formed digest list" in err
    assert bad.read_bytes() == b"IGDLIST\0"


def test_show(signed: Path, tree: Path, rsa_dir: Path, capsys: Capsys) -> None:
    key = imaguard.load_private_key(rsa_dir / "private.pem")
    code, out, _ = run_in_process(capsys, "digestlist", "show", signed)
    assert code == 0
    assert f"source:    tree:{tree}" in out
    assert "digests:   3" in out
    assert f"appended, key id {key.key_id:08x} (sha256); not verified" in out
    readme = sha256(b"read me\n")
    assert f"{readme}  {tree / 'README'}" in out
    code, out, _ = run_in_process(capsys, "digestlist", "show", "--json", signed)
    doc = json.loads(out)
    assert doc["count"] == 3
    assert doc["signature"]["key_id"] == f"{key.key_id:08x}"
    assert len(doc["entries"]) == 3
    assert doc["more"] == 0


def test_show_limits_entries_and_escapes_odd_paths(tmp_path: Path, capsys: Capsys) -> None:
    odd = "/srv/\udcff-odd"
    entries: list[tuple[bytes, str | None]] = [
        (hashlib.sha256(str(i).encode()).digest(), f"/f{i}") for i in range(14)
    ]
    entries.append((hashlib.sha256(b"odd").digest(), odd))
    dl = dlf.DigestList.build("sha256", entries)
    path = tmp_path / "many.list"
    path.write_bytes(dlf.serialize(dl))
    code, out, _ = run_in_process(capsys, "digestlist", "show", path)
    assert code == 0
    assert "... 5 more (--all)" in out
    assert "signature: none (unsigned)" in out
    code, out, _ = run_in_process(capsys, "digestlist", "show", "--all", "--json", path)
    doc = json.loads(out)
    assert len(doc["entries"]) == 15
    assert "/srv/\\xff-odd" in [e["path"] for e in doc["entries"]]
    path.write_bytes(b"XXXXXXXX" + dlf.serialize(dl)[8:])
    code, _, err = run_in_process(capsys, "digestlist", "show", path)
    assert code == 2
    assert "bad magic" in err


# -- trust lookup --list (offline) ------------------------------------------------------------
def lookup(capsys: Capsys, *args: str | Path) -> tuple[int, str, str]:
    return run_in_process(capsys, "trust", "lookup", *args)


def test_lookup_offline(
    signed: Path, tree: Path, tmp_path: Path, rsa_dir: Path, capsys: Capsys
) -> None:
    ring = ("--list", signed, "--keyring", rsa_dir)
    code, out, _ = lookup(capsys, tree / "bin" / "tool", *ring)
    assert code == 0
    assert f"vouched for by {signed}" in out
    assert f"as {tree / 'bin' / 'tool'}" in out
    stranger = tmp_path / "stranger"
    stranger.write_bytes(b"not in any list\n")
    code, out, _ = lookup(capsys, stranger, *ring)
    assert code == 1
    assert "not vouched for by any digest list" in out
    code, out, _ = lookup(capsys, "--digest", sha256(b"read me\n"), *ring, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["vouched"] is True
    assert doc["lists"][0]["path"] == str(tree / "README")
    assert doc["lists"][0]["id"] == sha256(signed.read_bytes())[:32]
    code, out, _ = lookup(capsys, "--digest", sha256(b"read me\n"), "-a", "sha512", *ring)
    assert code == 2  # a sha256 hex is not a sha512 digest


def test_lookup_offline_refuses_a_bad_list(
    signed: Path, tree: Path, ec_dir: Path, rsa_dir: Path, capsys: Capsys
) -> None:
    code, _, err = lookup(capsys, tree / "README", "--list", signed, "--keyring", ec_dir)
    assert code == 2
    assert "does not verify" in err
    signed.write_bytes(signed.read_bytes()[:50])
    code, _, err = lookup(capsys, tree / "README", "--list", signed, "--keyring", rsa_dir)
    assert code == 2
    assert "malformed" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--digest", "zz"), "not hexadecimal"),
        (("--digest", "abcd"), "2 bytes; a sha256 digest is 32"),
        ((), "give PATH or --digest"),
        (("--keyring", "x", "--digest", "00" * 32), "verify the lists given with --list"),
    ],
)
def test_lookup_usage_errors(capsys: Capsys, args: tuple[str, ...], message: str) -> None:
    code, _, err = lookup(capsys, *args)
    assert code == 2
    assert message in err


# -- through the daemon (a stand-in answering the four operations) ---------------------------
@dataclass
class FakeDaemon:
    socket: str
    db: TrustDB
    seen: list[dict[str, Any]] = field(default_factory=list)
    passed: list[bytes] = field(default_factory=list)  # the bytes of each descriptor passed


@pytest.fixture
def daemon(tmp_path: Path, rsa_dir: Path) -> Iterator[FakeDaemon]:
    ring = imaguard.Keyring.load(rsa_dir / "cert.der")
    db = TrustDB(tmp_path / "trust")
    fake = FakeDaemon(str(tmp_path / "run" / "control.sock"), db)

    def handle(request: dict[str, Any], peer: Peer, fds: list[int]) -> Reply:
        fake.seen.append(request)
        op = request.get("op")
        try:
            if op == "digestlist_add":
                sig = request.get("signature")
                if "data" in request:
                    data = base64.b64decode(request["data"])
                else:  # the list's descriptor was passed, as the CLI does
                    assert len(fds) == 1
                    data = os.pread(fds[0], 1 << 30, 0)
                fake.passed.append(data)
                info = db.add(
                    data,
                    ring,
                    name=request.get("name"),
                    signature=base64.b64decode(sig) if sig is not None else None,
                )
                return Reply(info.to_dict())
            if op == "digestlist_remove":
                return Reply({"removed": db.remove(str(request["which"])).to_dict()})
            if op == "trust_lookup":
                algorithm = str(request.get("algorithm", "sha256"))
                found = db.lookup(bytes.fromhex(str(request["digest"])), algorithm)
                return Reply(
                    {
                        "digest": request["digest"],
                        "algorithm": algorithm,
                        "lists": [li.to_dict() for li in found],
                    }
                )
            if op == "digestlists":
                return Reply({"lists": [li.to_dict() for li in db.lists()]})
        # the codes the daemon gives (src/imaguard/service/_trust.py)
        except VerificationError as e:
            raise ProtocolError("bad-signature", str(e)) from e
        except FormatError as e:
            raise ProtocolError("bad-policy", str(e)) from e
        except UsageError as e:
            code = "exists" if op == "digestlist_add" else "no-such-policy"
            raise ProtocolError(code, str(e)) from e
        raise ProtocolError("unknown-op", f"unknown op {op!r}")

    srv = ControlServer(fake.socket, handle)
    srv.start()
    try:
        yield fake
    finally:
        srv._stop.set()
        with contextlib.suppress(OSError):
            srv._sock.shutdown(socket.SHUT_RDWR)
        srv.close()
        db.close()


def dl_cmd(
    capsys: Capsys, daemon: FakeDaemon, verb: str, *args: str | Path
) -> tuple[int, str, str]:
    return run_in_process(capsys, "digestlist", verb, "--socket", daemon.socket, *args)


def test_add_lookup_list_remove(
    signed: Path, tree: Path, tmp_path: Path, daemon: FakeDaemon, capsys: Capsys
) -> None:
    code, out, err = dl_cmd(capsys, daemon, "add", signed)
    assert (code, err) == (0, "")
    assert f"added tree:{tree}  id=" in out
    request = daemon.seen[-1]
    assert request["op"] == "digestlist_add"
    assert request["name"] == f"tree:{tree}"
    assert "data" not in request
    assert daemon.passed == [signed.read_bytes()]
    assert request["signature"] is None

    tool = tree / "bin" / "tool"
    code, out, _ = lookup(capsys, tool, "--socket", daemon.socket)
    assert code == 0
    assert f"{tool}: vouched for by tree:{tree}" in out
    assert daemon.seen[-1] == {
        "v": 1,
        "op": "trust_lookup",
        "id": 1,
        "digest": sha256(tool.read_bytes()),
        "algorithm": "sha256",
    }
    stranger = tmp_path / "stranger"
    stranger.write_bytes(b"unknown")
    code, out, _ = lookup(capsys, stranger, "--socket", daemon.socket, "--json")
    assert code == 1
    assert json.loads(out)["lists"] == []

    code, out, _ = dl_cmd(capsys, daemon, "list", "--json")
    assert code == 0
    (info,) = json.loads(out)["lists"]
    assert (info["name"], info["count"]) == (f"tree:{tree}", 3)
    code, out, _ = dl_cmd(capsys, daemon, "list")
    assert f"tree:{tree}  id={info['id']}" in out

    code, out, _ = dl_cmd(capsys, daemon, "remove", info["id"][:12])
    assert code == 0
    assert f"removed tree:{tree}  id={info['id']}" in out
    assert daemon.seen[-1]["which"] == info["id"][:12]
    code, _, _ = lookup(capsys, tool, "--socket", daemon.socket)
    assert code == 1
    code, out, _ = dl_cmd(capsys, daemon, "list")
    assert "(no digest lists loaded)" in out


def test_add_with_a_name_and_a_detached_signature(
    made: Path, rsa_dir: Path, daemon: FakeDaemon, capsys: Capsys
) -> None:
    run_in_process(
        capsys, "digestlist", "sign", "--detached", "--key", rsa_dir / "private.pem", made
    )
    code, out, _ = dl_cmd(capsys, daemon, "add", "--name", "app", "--json", made)
    assert code == 0
    assert json.loads(out)[0]["name"] == "app"
    request = daemon.seen[-1]
    assert base64.b64decode(request["signature"]) == Path(f"{made}.sig").read_bytes()
    assert daemon.passed[-1] == made.read_bytes()
    code, out, _ = dl_cmd(capsys, daemon, "remove", "--json", "app")
    assert code == 0
    assert json.loads(out)[0]["name"] == "app"


def test_add_refusals(
    made: Path, signed: Path, tmp_path: Path, ec_dir: Path, daemon: FakeDaemon, capsys: Capsys
) -> None:
    code, _, err = dl_cmd(capsys, daemon, "add", "--name", "x", signed, signed)
    assert code == 2
    assert "--name names one list" in err
    # unsigned: refused by the daemon, whose message is shown
    unsigned = tmp_path / "unsigned.list"
    unsigned.write_bytes(dlf.serialize(dlf.parse(signed.read_bytes())))
    code, _, err = dl_cmd(capsys, daemon, "add", unsigned)
    assert code == 2
    assert f"{unsigned}: refused: " in err
    assert "not signed" in err
    # malformed: refused here, before anything is sent
    sent = len(daemon.seen)
    bad = tmp_path / "bad.list"
    bad.write_bytes(b"garbage")
    code, _, err = dl_cmd(capsys, daemon, "add", bad, signed)
    assert code == 2
    assert f"{bad}: malformed digest list" in err
    assert len(daemon.seen) == sent + 1  # only the good one went
    # already loaded
    code, _, err = dl_cmd(capsys, daemon, "add", signed)
    assert code == 2
    assert "already loaded" in err
    code, _, err = dl_cmd(capsys, daemon, "remove", "no-such-list")
    assert code == 2
    assert "no loaded digest list" in err


def test_a_list_larger_than_a_frame_goes_as_its_descriptor(
    tmp_path: Path, rsa_dir: Path, daemon: FakeDaemon, capsys: Capsys
) -> None:
    entries: list[tuple[bytes, str | None]] = [
        (hashlib.sha256(i.to_bytes(4, "big")).digest(), f"/usr/lib/some/where/file-{i}")
        for i in range(20_000)
    ]
    big = tmp_path / "big.list"
    big.write_bytes(dlf.serialize(dlf.DigestList.build("sha256", entries)))
    run_in_process(capsys, "digestlist", "sign", "--key", rsa_dir / "private.pem", big)
    assert big.stat().st_size > 1 << 20  # more than one protocol frame could carry
    code, _, err = dl_cmd(capsys, daemon, "add", big)
    assert code == 0, err
    assert daemon.passed == [big.read_bytes()]
    assert len(daemon.db.lists()) == 1
    assert daemon.db.lists()[0].count == 20_000


def test_no_daemon(signed: Path, tmp_path: Path, capsys: Capsys) -> None:
    code, _, err = run_in_process(
        capsys, "digestlist", "add", "--socket", tmp_path / "absent.sock", signed
    )
    assert code == 2
    assert "no imaguard daemon answers" in err


# -- the apt hook ----------------------------------------------------------------------------
def build_deb(tmp: Path, name: str, version: str) -> Path:
    src = tmp / f"{name}-src"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: t <t@example.org>\nDescription: test\n"
    )
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "usr" / "bin" / name).write_text(f"#!/bin/sh\necho {name} {version}\n")
    out = tmp / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(src), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def hook(*args: str | Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, str(HOOK), *(str(a) for a in args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "IMAGUARD_CMD": str(IMAGUARD), **env},
    )
    assert "Traceback" not in r.stdout + r.stderr
    return r


needs_dpkg_deb = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="no dpkg-deb")


@needs_dpkg_deb
def test_apt_hook_adds_and_cleans_up(
    tmp_path: Path, rsa_dir: Path, daemon: FakeDaemon, signed: Path, capsys: Capsys
) -> None:
    deb = build_deb(tmp_path, "imaguard-hook-test", "1.2-3")
    state = tmp_path / "state"
    common = ("--key", rsa_dir / "private.pem", "--socket", daemon.socket, "--state-dir", state)
    r = hook(*common, stdin=f"{deb}\n/var/cache/apt/archives/partial\n\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deb:imaguard-hook-test: 1 digests vouched for" in r.stdout
    assert "not a .deb file, passed over" in r.stdout
    (info,) = daemon.db.lists()
    assert (info.name, info.source) == ("deb:imaguard-hook-test", "deb:imaguard-hook-test=1.2-3")
    kept = state / "imaguard-hook-test_1.2-3_all.list"
    assert kept.exists()
    script = (tmp_path / "imaguard-hook-test-src" / "usr/bin/imaguard-hook-test").read_bytes()
    assert daemon.db.lookup(hashlib.sha256(script).digest()) == [info]

    # a list loaded by hand, even under a deb: name, is not the hook's to remove
    code, _, _ = dl_cmd(capsys, daemon, "add", "--name", "deb:by-hand", signed)
    assert code == 0

    # Post-Invoke: the package is not installed on this machine, so its list goes
    r = hook("--cleanup", *common)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deb:imaguard-hook-test (list " in r.stdout
    assert "removed (not installed)" in r.stdout
    assert [li.name for li in daemon.db.lists()] == ["deb:by-hand"]
    assert not kept.exists()


@needs_dpkg_deb
def test_apt_hook_remove_mode(tmp_path: Path, rsa_dir: Path, daemon: FakeDaemon) -> None:
    deb = build_deb(tmp_path, "imaguard-hook-rm", "1")
    common = ("--key", rsa_dir / "private.pem", "--socket", daemon.socket)
    assert hook(*common, "--state-dir", tmp_path / "s", stdin=f"{deb}\n").returncode == 0
    assert len(daemon.db.lists()) == 1
    r = hook(*common, "--remove", "imaguard-hook-rm", "not-loaded")
    assert r.returncode == 0
    assert "removed (asked to)" in r.stdout
    assert "deb:not-loaded: no digest list loaded" in r.stdout
    assert daemon.db.lists() == []


@needs_dpkg_deb
def test_apt_hook_cleanup_keeps_installed_packages(
    tmp_path: Path, rsa_dir: Path, daemon: FakeDaemon
) -> None:
    """A list of the installed version of a real package stays; an older duplicate goes."""
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "hostname"], capture_output=True, text=True
    ).stdout
    if not version:
        pytest.skip("hostname is not installed")
    deb = build_deb(tmp_path, "hostname", version)  # a stand-in with the installed version
    common = ("--key", rsa_dir / "private.pem", "--socket", daemon.socket)
    for epoch in ("1700000000", "1700000001"):  # two lists of the same version
        r = hook(*common, "--state-dir", tmp_path / "s", stdin=f"{deb}\n", SOURCE_DATE_EPOCH=epoch)
        assert r.returncode == 0
    assert len(daemon.db.lists()) == 2
    # the very same list again (a reinstall, made reproducibly): not a failure, even strict
    r = hook(
        *common,
        "--strict",
        "--state-dir",
        tmp_path / "s",
        stdin=f"{deb}\n",
        SOURCE_DATE_EPOCH="1700000001",
    )
    assert r.returncode == 0, r.stdout
    assert "its digest list is already loaded" in r.stdout
    r = hook("--cleanup", *common, "--state-dir", tmp_path / "s")
    assert r.returncode == 0, r.stdout
    assert "a newer list of the same version is loaded" in r.stdout
    (kept,) = daemon.db.lists()
    assert kept.source == f"deb:hostname={version}"


@needs_dpkg_deb
def test_apt_hook_failures_block_apt_only_when_strict(
    tmp_path: Path, rsa_dir: Path, daemon: FakeDaemon
) -> None:
    deb = build_deb(tmp_path, "imaguard-hook-strict", "1")
    state = ("--state-dir", tmp_path / "s")
    # no key
    r = hook("--key", tmp_path / "nokey.pem", "--socket", daemon.socket, *state, stdin=f"{deb}\n")
    assert r.returncode == 0
    assert "warning: no signing key at" in r.stdout
    r = hook(
        "--key",
        tmp_path / "nokey.pem",
        "--socket",
        daemon.socket,
        *state,
        "--strict",
        stdin=f"{deb}\n",
    )
    assert r.returncode == 1
    assert "strict mode: stopping" in r.stdout
    # no daemon
    key = ("--key", rsa_dir / "private.pem")
    absent = ("--socket", tmp_path / "absent.sock")
    r = hook(*key, *absent, *state, stdin=f"{deb}\n")
    assert r.returncode == 0
    assert "not loaded" in r.stdout
    assert (tmp_path / "s" / "imaguard-hook-strict_1_all.list").exists()
    r = hook(*key, *absent, *state, stdin=f"{deb}\n", IMAGUARD_APT_STRICT="1")
    assert r.returncode == 1
    # a broken package
    bad = tmp_path / "broken_1_all.deb"
    bad.write_text("not a package")
    r = hook(*key, "--socket", daemon.socket, *state, stdin=f"{bad}\n")
    assert r.returncode == 0
    assert "broken_1_all: no digest list: " in r.stdout
    assert daemon.db.lists() == []


def test_apt_conf_snippet_parses() -> None:
    snippet = ROOT / "packaging" / "apt" / "99imaguard-digestlists"
    if shutil.which("apt-config") is None:
        pytest.skip("apt-config is not installed")
    out = subprocess.run(
        ["apt-config", "-c", str(snippet), "dump"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert 'DPkg::Pre-Install-Pkgs:: "[ ! -x /usr/lib/imaguard/apt-digestlist-hook ] ||' in out
    assert "apt-digestlist-hook --cleanup" in out
