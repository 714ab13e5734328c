"""The ``imaguard`` command, in-process through ``imaguard.cli.main`` and as a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import imaguard
from helpers import needs_root, needs_root_because
from helpers.clirun import run_in_process as run
from imaguard.appraise import _batch as batch

IMAGUARD = Path(sys.executable).with_name("imaguard")
CONTENT = b"#!/bin/sh\nexit 0\n"


def run_sub(
    *args: str | os.PathLike[str], timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``imaguard`` script; a hang fails the test through the timeout."""
    r = subprocess.run(
        [str(IMAGUARD), *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    assert "Traceback" not in r.stdout
    assert "Traceback" not in r.stderr
    return r


@pytest.fixture
def rsa(keys_dir: dict[str, Path]) -> Path:
    return keys_dir["rsa2048"]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    p = tmp_path / "prog"
    p.write_bytes(CONTENT)
    return p


def _value(path: Path, attribute: str = "user.ima") -> bytes | None:
    try:
        return os.getxattr(path, attribute, follow_symlinks=False)
    except OSError:
        return None


# --- keys generate --------------------------------------------------------------------


@pytest.mark.parametrize("key_type", imaguard.crypto.KEY_TYPES)
def test_keys_generate(capsys: pytest.CaptureFixture[str], tmp_path: Path, key_type: str) -> None:
    out_dir = tmp_path / "k"
    code, out, err = run(capsys, "keys", "generate", "--type", key_type, "--out", out_dir)
    assert code == 0, err
    names = {"private.pem", "cert.pem", "cert.der"}
    assert {p.name for p in out_dir.iterdir()} == names
    assert {Path(line).name for line in out.split()} == names
    assert stat_mode(out_dir / "private.pem") == 0o600
    key = imaguard.load_private_key(out_dir / "private.pem")
    cert = imaguard.load_certificates(out_dir / "cert.der")[0]
    assert imaguard.load_certificates(out_dir / "cert.pem")[0].der() == cert.der()
    assert key.with_certificate(cert).key_id == cert.key_id
    assert f"key id: {cert.key_id:08x}" in err


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_keys_generate_refuses_overwrite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "k"
    assert run(capsys, "keys", "generate", "--out", out_dir)[0] == 0
    before = (out_dir / "private.pem").read_bytes()
    code, _out, err = run(capsys, "keys", "generate", "--type", "ecdsa-p256", "--out", out_dir)
    assert code == 2
    assert "refusing to overwrite" in err
    assert str(out_dir / "private.pem") in err
    assert (out_dir / "private.pem").read_bytes() == before
    code, _out, err = run(
        capsys, "keys", "generate", "--type", "ecdsa-p256", "--out", out_dir, "--force"
    )
    assert code == 0, err
    assert (out_dir / "private.pem").read_bytes() != before
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]


def test_keys_generate_into_an_unusable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_bytes(b"not a directory")
    out_dir = blocker / "keys"
    r = run_sub("keys", "generate", "--type", "ecdsa-p256", "--out", out_dir)
    assert r.returncode == 2, r.stderr
    assert str(out_dir) in r.stderr
    assert blocker.read_bytes() == b"not a directory"


def test_keys_generate_bad_type(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _out, err = run(capsys, "keys", "generate", "--type", "dsa1024", "--out", tmp_path)
    assert code == 2
    assert "dsa1024" in err


# --- sign / verify ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "store_args",
    [
        pytest.param(["--store", "user-xattr"], id="user-xattr"),
        pytest.param([], id="default", marks=needs_root),
        pytest.param(["--store", "sigfile"], id="sigfile"),
    ],
)
def test_sign_verify_round_trip(
    capsys: pytest.CaptureFixture[str], rsa: Path, target: Path, store_args: list[str]
) -> None:
    code, out, err = run(capsys, "sign", "-k", rsa / "private.pem", *store_args, target)
    assert code == 0, err
    assert out == ""
    code, out, err = run(capsys, "verify", "--cert", rsa / "cert.der", *store_args, target)
    assert code == 0, err
    assert "Traceback" not in err


@needs_root
def test_default_store_is_security_ima_as_root(
    capsys: pytest.CaptureFixture[str], rsa: Path, target: Path
) -> None:
    assert run(capsys, "sign", "-k", rsa / "private.pem", target)[0] == 0
    raw = _value(target, "security.ima")
    assert raw is not None
    assert raw[0] == 0x03
    assert _value(target, "user.ima") is None


def test_tampered_file_fails_verification(
    capsys: pytest.CaptureFixture[str], rsa: Path, target: Path
) -> None:
    assert run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", target)[0] == 0
    with target.open("ab") as f:
        f.write(b"rm -rf /\n")
    code, _out, err = run(capsys, "verify", "--cert", rsa / "cert.der", "--xattr-user", target)
    assert code == 1
    line = next(ln for ln in err.splitlines() if str(target) in ln)
    assert "invalid-signature" in line


def test_verify_unsigned_file_fails(
    capsys: pytest.CaptureFixture[str], rsa: Path, target: Path
) -> None:
    code, _out, err = run(capsys, "verify", "--cert", rsa / "cert.pem", "--xattr-user", target)
    assert code == 1
    assert str(target) in err
    assert "IMA-signature-required" in err


def test_verify_with_keyring_directory(
    capsys: pytest.CaptureFixture[str], rsa: Path, target: Path, tmp_path: Path
) -> None:
    # A private copy: other tests may add files to the shared keys directory.
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    for name in ("private.pem", "cert.pem", "cert.der"):
        shutil.copy(rsa / name, ring_dir / name)
    assert run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", target)[0] == 0
    # The directory also holds private.pem: it is passed over, not an error.
    code, _out, err = run(capsys, "verify", "--keyring", ring_dir, "--xattr-user", target)
    assert code == 0, err


def test_verify_with_the_wrong_key(
    capsys: pytest.CaptureFixture[str], keys_dir: dict[str, Path], target: Path
) -> None:
    rsa, ec = keys_dir["rsa2048"], keys_dir["ecdsa-p256"]
    assert run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", target)[0] == 0
    code, _out, err = run(capsys, "verify", "--cert", ec / "cert.der", "--xattr-user", target)
    assert code == 1
    assert "unknown-key" in err
    code, _out, err = run(
        capsys,
        "verify",
        "--cert",
        ec / "cert.der",
        "--cert",
        rsa / "cert.pem",
        "--xattr-user",
        target,
    )
    assert code == 0, err


def test_sign_with_cert_and_algorithm(
    capsys: pytest.CaptureFixture[str], keys_dir: dict[str, Path], target: Path
) -> None:
    ec = keys_dir["ecdsa-p384"]
    code, out, err = run(
        capsys,
        "-v",
        "sign",
        "-k",
        ec / "private.pem",
        "--cert",
        ec / "cert.pem",
        "-a",
        "sha384",
        "--xattr-user",
        target,
    )
    assert code == 0, err
    raw = _value(target)
    assert raw is not None
    assert f"{target}: {raw.hex()}" in out  # -v prints each value
    cert = imaguard.load_certificates(ec / "cert.pem")[0]
    info = imaguard.signature_info(target, store="user-xattr")
    assert info.algorithm == "sha384"
    assert info.key_id == cert.key_id


def test_sign_with_mismatched_cert(
    capsys: pytest.CaptureFixture[str], keys_dir: dict[str, Path], target: Path
) -> None:
    code, _out, err = run(
        capsys,
        "sign",
        "-k",
        keys_dir["rsa2048"] / "private.pem",
        "--cert",
        keys_dir["rsa3072"] / "cert.pem",
        "--xattr-user",
        target,
    )
    assert code == 2
    assert "does not match" in err
    assert _value(target) is None


def test_verify_json(capsys: pytest.CaptureFixture[str], rsa: Path, tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(b"good")
    bad.write_bytes(b"bad")
    assert run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", good, bad)[0] == 0
    bad.write_bytes(b"BAD")
    code, out, _err = run(
        capsys, "verify", "--json", "--cert", rsa / "cert.der", "--xattr-user", good, bad
    )
    assert code == 1
    data = json.loads(out)
    assert isinstance(data, list)
    assert len(data) == 2
    by_path = {d["path"]: d for d in data}
    for d in data:
        assert {"path", "status", "cause", "key_id", "algorithm"} <= set(d)
    key_id = f"{imaguard.load_private_key(rsa / 'private.pem').key_id:08x}"
    assert by_path[str(good)]["status"] == "pass"
    assert by_path[str(good)]["cause"] is None
    assert by_path[str(good)]["key_id"] == key_id
    assert by_path[str(good)]["algorithm"] == "sha256"
    assert by_path[str(bad)]["status"] == "fail"
    assert by_path[str(bad)]["cause"] == "invalid-signature"
    assert by_path[str(bad)]["key_id"] == key_id


def test_verify_json_recursive_entries_have_the_same_keys(
    capsys: pytest.CaptureFixture[str], rsa: Path, tree: dict[str, Path]
) -> None:
    root = tree["root"]
    assert run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", "-r", root)[0] == 0
    code, out, _err = run(
        capsys, "verify", "--json", "--cert", rsa / "cert.der", "--xattr-user", "-r", root
    )
    assert code == 0
    data = json.loads(out)
    assert len(data) == 6  # a, b, sub/c verified; fifo, sock, link skipped
    assert sum(d["status"] == "pass" for d in data) == 3
    for d in data:  # one shape for every entry, skipped ones included
        assert {"path", "status", "cause", "key_id", "algorithm"} <= set(d), d


def test_verify_allow_digest(capsys: pytest.CaptureFixture[str], rsa: Path, target: Path) -> None:
    assert run(capsys, "hash", "--xattr-user", target)[0] == 0
    code, _out, err = run(capsys, "verify", "--cert", rsa / "cert.der", "--xattr-user", target)
    assert code == 1
    assert "IMA-signature-required" in err
    code, _out, err = run(
        capsys, "verify", "--allow-digest", "--cert", rsa / "cert.der", "--xattr-user", target
    )
    assert code == 0, err


# --- hash, show ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "prefix"), [("sha256", "0404"), ("sha1", "01"), ("sha512", "0406")]
)
def test_hash_prints_the_stored_value(
    capsys: pytest.CaptureFixture[str], target: Path, algo: str, prefix: str
) -> None:
    code, out, err = run(capsys, "hash", "-a", algo, "--xattr-user", target)
    assert code == 0, err
    printed, name = out.split()
    assert name == str(target)
    raw = _value(target)
    assert raw is not None
    assert printed == raw.hex()
    assert printed.startswith(prefix)
    assert raw.endswith(imaguard.hash_file(target, algo).value)


def test_hash_dry_run_stores_nothing(capsys: pytest.CaptureFixture[str], target: Path) -> None:
    code, out, err = run(capsys, "hash", "-n", "--xattr-user", target)
    assert code == 0, err
    assert _value(target) is None
    expected = b"\x04\x04" + imaguard.hash_file(target).value
    assert out.split()[0] == expected.hex()
    sigfile = run(capsys, "hash", "--dry-run", "--store", "sigfile", target)
    assert sigfile[0] == 0
    assert not Path(f"{target}.sig").exists()


def test_show(capsys: pytest.CaptureFixture[str], rsa: Path, tmp_path: Path) -> None:
    signed, hashed, bare = tmp_path / "signed", tmp_path / "hashed", tmp_path / "bare"
    for p in (signed, hashed, bare):
        p.write_bytes(p.name.encode())
    assert run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", signed)[0] == 0
    assert run(capsys, "hash", "--xattr-user", hashed)[0] == 0
    key_id = f"{imaguard.load_private_key(rsa / 'private.pem').key_id:08x}"

    code, out, err = run(capsys, "show", "--xattr-user", signed, hashed, bare)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(
        f"{signed}: signed, key id {key_id}, sha256, signature-v2 (type=0x03, sig="
    )
    assert lines[1].startswith(f"{hashed}: not signed: a sha256 digest-ng value (type=0x04)")
    assert lines[1].endswith(imaguard.hash_file(hashed).hex)
    assert lines[2] == f"{bare}: not signed (no value in user.ima)"

    code, out, err = run(capsys, "show", "--json", "--xattr-user", signed, hashed, bare)
    assert code == 0, err
    data = json.loads(out)
    assert [d["path"] for d in data] == [str(signed), str(hashed), str(bare)]
    assert data[0]["signed"] is True
    assert data[0]["key_id"] == key_id
    assert data[0]["type"] == "0x03"
    assert data[1]["signed"] is False
    assert data[1]["digest"] == imaguard.hash_file(hashed).hex
    assert data[2]["present"] is False


def test_show_malformed_and_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"x")
    os.setxattr(bad, "user.ima", b"\x03\x02\x04\x00\x00\x00\x01\x00\x05abc")
    missing = tmp_path / "missing"
    code, out, err = run(capsys, "show", "--xattr-user", bad, missing)
    assert code == 2
    assert f"{bad}: malformed value" in out
    assert str(missing) in err
    code, out, _err = run(capsys, "show", "--json", "--xattr-user", bad, missing)
    assert code == 2
    data = json.loads(out)
    assert data[0]["error"]
    assert data[1]["path"] == str(missing)
    assert data[1]["error"]


# --- usage and operational errors -----------------------------------------------------


def test_directory_without_recursive(
    capsys: pytest.CaptureFixture[str], rsa: Path, tmp_path: Path
) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    (d / "f").write_bytes(b"f")
    code, _out, err = run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", d)
    assert code == 2
    line = next(ln for ln in err.splitlines() if "is a directory" in ln)
    assert str(d) in line
    assert _value(d / "f") is None


def test_missing_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, target: Path) -> None:
    key = tmp_path / "no-such-key.pem"
    code, _out, err = run(capsys, "sign", "-k", key, "--xattr-user", target)
    assert code == 2
    assert str(key) in err
    assert _value(target) is None


def test_garbage_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, target: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")
    code, _out, err = run(capsys, "sign", "-k", key, "--xattr-user", target)
    assert code == 2
    assert str(key) in err


@pytest.fixture
def encrypted_key(tmp_path: Path, rsa_key: imaguard.PrivateKey) -> Path:
    p = tmp_path / "enc.pem"
    p.write_bytes(
        rsa_key.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    return p


def test_encrypted_key_passwords(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    encrypted_key: Path,
    rsa: Path,
    target: Path,
) -> None:
    monkeypatch.delenv("IMAGUARD_KEY_PASSWORD", raising=False)
    code, _out, err = run(capsys, "sign", "-k", encrypted_key, "--xattr-user", target)
    assert code == 2
    assert "encrypted" in err

    code, _out, err = run(
        capsys, "sign", "-k", encrypted_key, "--pass", "wrong", "--xattr-user", target
    )
    assert code == 2
    assert "password" in err
    assert str(encrypted_key) in err
    assert _value(target) is None

    monkeypatch.setenv("IMAGUARD_KEY_PASSWORD", "wrong too")
    assert run(capsys, "sign", "-k", encrypted_key, "--xattr-user", target)[0] == 2

    monkeypatch.setenv("IMAGUARD_KEY_PASSWORD", "correct horse")
    code, _out, err = run(capsys, "sign", "-k", encrypted_key, "--xattr-user", target)
    assert code == 0, err
    monkeypatch.delenv("IMAGUARD_KEY_PASSWORD")
    code, _out, err = run(
        capsys, "sign", "-k", encrypted_key, "-p", "correct horse", "--xattr-user", target
    )
    assert code == 0, err
    assert run(capsys, "verify", "--cert", rsa / "cert.der", "--xattr-user", target)[0] == 0


def test_verify_needs_trusted_keys(capsys: pytest.CaptureFixture[str], target: Path) -> None:
    code, _out, err = run(capsys, "verify", target)
    assert code == 2
    assert "--cert" in err


def test_verify_with_missing_cert(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: Path
) -> None:
    cert = tmp_path / "nope.der"
    code, _out, err = run(capsys, "verify", "--cert", cert, target)
    assert code == 2
    assert str(cert) in err


def test_xattr_user_conflicts_with_store(
    capsys: pytest.CaptureFixture[str], rsa: Path, target: Path
) -> None:
    code, _out, err = run(
        capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", "--store", "xattr", target
    )
    assert code == 2
    assert "--xattr-user" in err


def test_bad_options(capsys: pytest.CaptureFixture[str], rsa: Path, target: Path) -> None:
    assert run(capsys, "sign", target)[0] == 2  # no --key
    assert run(capsys, "sign", "-k", rsa / "private.pem")[0] == 2  # no path
    assert run(capsys, "sign", "-k", rsa / "private.pem", "-a", "crc32", target)[0] == 2
    assert run(capsys, "verify", "--cert", rsa / "cert.der", "--store", "nope", target)[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "sign", "-k", rsa / "private.pem", "-j", "0", "-r", target)[0] == 2


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(capsys, "--version")
    assert code == 0
    assert imaguard.__version__ in out
    code, out, _err = run(capsys, "--help")
    assert code == 0
    for command in ("sign", "verify", "hash", "show", "keys"):
        assert command in out


def test_sign_fifo_argument_does_not_hang(rsa: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = run_sub("sign", "-k", rsa / "private.pem", "--xattr-user", fifo, timeout=30)
    assert r.returncode == 2
    assert str(fifo) in r.stderr
    assert "FIFO" in r.stderr
    r = run_sub("verify", "--cert", rsa / "cert.der", "--xattr-user", fifo, timeout=30)
    assert r.returncode != 0
    assert str(fifo) in r.stderr


def test_verify_missing_file_is_an_operational_error(
    capsys: pytest.CaptureFixture[str], rsa: Path, tmp_path: Path
) -> None:
    # README: exit 2 is "a usage or operational error (unreadable key or file, ...)";
    # exit 1 is for files that were examined and failed verification.
    missing = tmp_path / "missing"
    code, _out, err = run(capsys, "verify", "--cert", rsa / "cert.der", "--xattr-user", missing)
    assert str(missing) in err
    assert code == 2


def test_verify_without_xattr_support_is_an_operational_error(
    capsys: pytest.CaptureFixture[str], rsa: Path, ramfs: Path
) -> None:
    # README: exit 2 for "no xattr support".
    p = ramfs / "f"
    p.write_bytes(b"data")
    code, _out, err = run(capsys, "verify", "--cert", rsa / "cert.der", "--xattr-user", p)
    assert str(p) in err
    assert "extended attributes" in err
    assert code == 2


def test_sign_without_xattr_support(
    capsys: pytest.CaptureFixture[str], rsa: Path, ramfs: Path
) -> None:
    p = ramfs / "f"
    p.write_bytes(b"data")
    code, _out, err = run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", p)
    assert code == 2
    assert str(p) in err
    assert "does not support extended attributes" in err


# --- recursive walks ----------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """root/{a, b, sub/c, fifo, sock, link -> ../outside/target}."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    paths = {
        "a": root / "a",
        "b": root / "b",
        "c": root / "sub" / "c",
        "fifo": root / "fifo",
        "sock": root / "sock",
        "link": root / "link",
        "linked": outside / "target",
    }
    for name in ("a", "b", "c", "linked"):
        paths[name].write_bytes(name.encode() * 100)
    os.mkfifo(paths["fifo"])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(paths["sock"]))
    paths["link"].symlink_to(paths["linked"])
    paths["root"] = root
    try:
        yield paths
    finally:
        s.close()


def _summary(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if re.match(r"imaguard: \d+ \w+", ln)]
    assert lines, stderr
    return lines[-1]


def test_recursive_skips_special_files(rsa: Path, tree: dict[str, Path]) -> None:
    r = run_sub("sign", "-k", rsa / "private.pem", "--xattr-user", "-r", tree["root"])
    assert r.returncode == 0, r.stderr
    summary = _summary(r.stderr)
    assert "3 signed" in summary
    assert "3 skipped" in summary
    for name in ("a", "b", "c"):
        assert _value(tree[name]) is not None, name
    assert _value(tree["linked"]) is None  # the link is not followed

    r = run_sub("verify", "--cert", rsa / "cert.der", "--xattr-user", "-r", tree["root"])
    assert r.returncode == 0, r.stderr
    summary = _summary(r.stderr)
    assert "3 verified" in summary
    assert "3 skipped" in summary

    r = run_sub("-v", "verify", "--cert", rsa / "cert.der", "--xattr-user", "-r", tree["root"])
    assert r.returncode == 0
    for name in ("fifo", "sock", "link"):
        assert str(tree[name]) in r.stderr, name


def test_recursive_follow_symlinks(rsa: Path, tree: dict[str, Path]) -> None:
    r = run_sub("sign", "-k", rsa / "private.pem", "--xattr-user", "-r", "-L", tree["root"])
    assert r.returncode == 0, r.stderr
    summary = _summary(r.stderr)
    assert "4 signed" in summary
    assert "2 skipped" in summary
    assert _value(tree["linked"]) is not None
    r = run_sub("verify", "--cert", rsa / "cert.der", "--xattr-user", "-r", "-L", tree["root"])
    assert r.returncode == 0, r.stderr
    assert "4 verified" in _summary(r.stderr)


def test_recursive_symlink_loop_terminates(rsa: Path, tmp_path: Path) -> None:
    root = tmp_path / "loop"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"f")
    (root / "d" / "up").symlink_to(root)
    r = run_sub("sign", "-k", rsa / "private.pem", "--xattr-user", "-r", "-L", root)
    assert r.returncode == 0, r.stderr
    assert _value(root / "d" / "f") is not None


def test_recursive_continues_past_a_problem_file(
    capsys: pytest.CaptureFixture[str], rsa: Path, tree: dict[str, Path], tmp_path: Path
) -> None:
    vanished = tmp_path / "vanished"
    code, _out, err = run(
        capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", "-r", tree["root"], vanished
    )
    assert code == 2
    assert any(str(vanished) in ln for ln in err.splitlines())
    summary = _summary(err)
    assert "3 signed" in summary
    assert "1 errors" in summary
    for name in ("a", "b", "c"):
        assert _value(tree[name]) is not None, name


@pytest.mark.skipif(shutil.which("chattr") is None, reason="chattr (e2fsprogs) is not installed")
@needs_root_because("chattr +i needs root")
def test_recursive_continues_past_an_unwritable_file(rsa: Path, tree: dict[str, Path]) -> None:
    # The middle file (b) cannot take a value: the walk goes on and reports it.
    r = subprocess.run(["chattr", "+i", str(tree["b"])], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"no immutable flag on this filesystem: {r.stderr!r}")
    try:
        r2 = run_sub("sign", "-k", rsa / "private.pem", "--xattr-user", "-r", tree["root"])
    finally:
        subprocess.run(["chattr", "-i", str(tree["b"])], check=True)
    assert r2.returncode == 2
    assert any(str(tree["b"]) in ln for ln in r2.stderr.splitlines())
    summary = _summary(r2.stderr)
    assert "2 signed" in summary
    assert "1 errors" in summary
    assert _value(tree["a"]) is not None
    assert _value(tree["c"]) is not None
    assert _value(tree["b"]) is None


def test_recursive_unlistable_directory_is_an_error(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    rsa: Path,
    tree: dict[str, Path],
) -> None:
    # A directory that cannot be listed hides files that were never verified: the run
    # must not end "all good".
    sub = str(tree["root"] / "sub")
    real = os.scandir

    def scandir(path: str) -> object:
        if os.fspath(path) == sub:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    assert (
        run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", "-r", tree["root"])[0] == 0
    )
    monkeypatch.setattr(os, "scandir", scandir)  # what _batch calls
    code, _out, err = run(
        capsys, "verify", "--cert", rsa / "cert.der", "--xattr-user", "-r", tree["root"]
    )
    assert sub in err
    assert code == 2


def test_sigfile_recursive_does_not_sign_sig_files(
    capsys: pytest.CaptureFixture[str], rsa: Path, tree: dict[str, Path]
) -> None:
    root = tree["root"]
    for _ in range(2):  # the second run sees the .sig files of the first
        code, _out, err = run(
            capsys, "sign", "-k", rsa / "private.pem", "--store", "sigfile", "-r", root
        )
        assert code == 0, err
        assert "3 signed" in _summary(err)
    sigs = sorted(str(p.relative_to(root)) for p in root.rglob("*.sig"))
    assert sigs == ["a.sig", "b.sig", "sub/c.sig"]
    assert not list(root.rglob("*.tmp"))
    assert _value(tree["a"]) is None
    code, _out, err = run(
        capsys, "verify", "--cert", rsa / "cert.der", "--store", "sigfile", "-r", root
    )
    assert code == 0, err
    assert "3 verified" in _summary(err)


def test_xattr_user_writes_user_ima(
    capsys: pytest.CaptureFixture[str], rsa: Path, target: Path
) -> None:
    assert run(capsys, "sign", "-k", rsa / "private.pem", "--xattr-user", target)[0] == 0
    raw = _value(target, "user.ima")
    assert raw is not None
    assert raw[:2] == b"\x03\x02"
    assert _value(target, "security.ima") is None
    assert not Path(f"{target}.sig").exists()
    # The same as --store user-xattr.
    assert (
        run(capsys, "verify", "--cert", rsa / "cert.der", "--store", "user-xattr", target)[0] == 0
    )


def test_hash_recursive(capsys: pytest.CaptureFixture[str], tree: dict[str, Path]) -> None:
    code, out, err = run(capsys, "hash", "--xattr-user", "-r", tree["root"])
    assert code == 0, err
    printed: dict[str, str] = {}
    for line in out.splitlines():
        hexvalue, path = line.split("  ", 1)
        printed[path] = hexvalue
    assert set(printed) == {str(tree[n]) for n in ("a", "b", "c")}
    for path, hexvalue in printed.items():
        raw = _value(Path(path))
        assert raw is not None
        assert raw.hex() == hexvalue


# --- the parallel path ------------------------------------------------------------------


def test_parallel_sign_and_verify(keys_dir: dict[str, Path], tmp_path: Path) -> None:
    ec = keys_dir["ecdsa-p256"]
    root = tmp_path / "many"
    count = batch.INLINE_LIMIT + 64
    for i in range(count):
        d = root / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}").write_bytes(f"file {i}\n".encode() * (i % 13 + 1))
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) == count > 300

    r = run_sub("sign", "-k", ec / "private.pem", "--xattr-user", "-r", "-j", "2", root)
    assert r.returncode == 0, r.stderr
    assert f"{count} signed" in _summary(r.stderr)
    key_id = imaguard.load_private_key(ec / "private.pem").key_id
    for p in files:
        info = imaguard.signature_info(p, store="user-xattr")
        assert info.signed, p
        assert info.key_id == key_id

    r = run_sub("verify", "--cert", ec / "cert.der", "--xattr-user", "-r", "-j", "2", root)
    assert r.returncode == 0, r.stderr
    assert f"{count} verified" in _summary(r.stderr)

    # A failure deep in one worker's chunk comes back with the file's name.
    victim = files[len(files) // 2 + 3]
    with victim.open("ab") as f:
        f.write(b"tampered\n")
    r = run_sub(
        "verify", "--json", "--cert", ec / "cert.der", "--xattr-user", "-r", "-j", "2", root
    )
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert len(data) == count
    failed = [d for d in data if d["status"] != "pass"]
    assert [d["path"] for d in failed] == [str(victim)]
    assert failed[0]["cause"] == "invalid-signature"
    # Without --json passes are only counted; the failure is still named, once.
    r = run_sub("verify", "--cert", ec / "cert.der", "--xattr-user", "-r", "-j", "2", root)
    assert r.returncode == 1
    assert r.stderr.count(str(victim)) == 1, r.stderr
    assert f"{count - 1} verified, 1 failed" in _summary(r.stderr)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_verify_tree_the_same_with_and_without_the_c_path(
    keys_dir: dict[str, Path], tmp_path: Path, jobs: str
) -> None:
    """`verify -r` prints the same lines and exit code whichever quick path runs."""
    rsa_dir = keys_dir["rsa2048"]
    key = imaguard.load_private_key(rsa_dir / "private.pem")
    store = imaguard.XattrStore("user.ima")
    root = tmp_path / "t"
    count = batch.INLINE_LIMIT + 300
    bad: list[Path] = []
    for i in range(count):
        d = root / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i:04d}"
        p.write_bytes(os.urandom(i % 700 + (70_000 if i % 97 == 0 else 0)))
        if i % 50 != 49:
            imaguard.sign_file(p, key, "sha256", store)
        if i % 61 == 5:
            with p.open("ab") as f:
                f.write(b"!")
        if i % 50 == 49 or i % 61 == 5:
            bad.append(p)
    os.mkfifo(root / "d0" / "fifo")
    outs = []
    for native in ("1", "0"):
        env = dict(os.environ, IMAGUARD_NATIVE=native)
        argv: list[str | os.PathLike[str]] = [
            *("verify", "--cert", rsa_dir / "cert.der", "--xattr-user", "-r", "-j", jobs, root)
        ]
        r = run_sub(*argv, env=env)
        assert r.returncode == 1
        assert f"{count - len(bad)} verified, {len(bad)} failed, 1 skipped" in _summary(r.stderr)
        outs.append((r.stdout, sorted(r.stderr.splitlines())))
        for p in bad:
            assert r.stderr.count(f"{p}:") == 1, (p, r.stderr)
    assert outs[0] == outs[1]
