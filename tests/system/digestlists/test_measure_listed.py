"""``measure_listed = false``: a file a loaded digest list vouches for is not measured on its
own; the list's measurement stands for it, and ``log verify --digestlist`` understands that.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import imaguard
from imaguard.digestlists import sign_list
from imaguard.formats import digestlist as dlf
from imaguard.formats.keylime import RuntimePolicy

from ..service.conftest import Daemon, cli, daemon_on_tmpfs, run

TMPFS_MAGIC = "0x01021994"

pytestmark = pytest.mark.root


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_on_tmpfs(tmp_path, "32m") as d:
        mnt = d.mnt
        for name in ("files", "lists"):
            imaguard.generate_key("ecdsa-p256").write(tmp_path / name)
            (tmp_path / f"{name}-ring").mkdir()
            shutil.copy(tmp_path / name / "cert.der", tmp_path / f"{name}-ring" / "cert.der")
        (tmp_path / "owners").mkdir()
        (tmp_path / "owners" / "p.toml").write_text('name = "p"\nuids = [0]\ndigestlists = true\n')
        d.config.write_text(
            f"""\
mode = "enforce"
watch = ["{mnt}"]
state = "{d.state}"
socket = "{d.sock}"
keyrings = ["{tmp_path / "files-ring"}"]
owners = "{tmp_path / "owners"}"
digestlist_keyrings = ["{tmp_path / "lists-ring"}"]
measure_listed = false

[[policy]]
name = "exec"
owner = "admin"
rules = \"\"\"
appraise func=BPRM_CHECK fsmagic={TMPFS_MAGIC} appraise_type=digestlist
measure func=BPRM_CHECK fsmagic={TMPFS_MAGIC}
\"\"\"
"""
        )
        d.start()
        yield d


def test_listed_files_are_not_measured_and_the_log_still_verifies(daemon: Daemon) -> None:
    d = daemon
    listed, signed = d.mnt / "listed", d.mnt / "signed"
    shutil.copy("/bin/true", listed)
    shutil.copy("/bin/echo", signed)
    imaguard.sign_file(signed, imaguard.load_private_key(d.base / "files" / "private.pem"))
    dl = dlf.DigestList.build(
        "sha256", {hashlib.sha256(listed.read_bytes()).digest(): str(listed)}, source="test"
    )
    list_file = d.base / "true.list"
    list_file.write_bytes(
        sign_list(dl, imaguard.load_private_key(d.base / "lists" / "private.pem"))
    )
    added = cli("digestlist", "add", "--socket", str(d.sock), "--name", "true", str(list_file))
    assert added.returncode == 0, added.stderr
    assert run(listed) == 0
    assert run(signed) == 0

    log = d.state / "log"
    lines = cli("log", "show", "--state", str(log)).stdout.splitlines()
    assert [line.split()[-1] for line in lines] == [
        "boot_aggregate",
        "imaguard:digestlist:true:add",
        str(signed),
    ]
    boot = lines[0].split()[3].split(":")[1]
    # the list's entry carries the digest of the very list file that was added
    assert lines[1].split()[3] == "sha256:" + hashlib.sha256(list_file.read_bytes()).hexdigest()

    # a runtime policy that allows only the signed program: the listed one is covered by
    # the list the verifier is given, and the list's own entry must be that very list
    policy = d.base / "policy.json"
    policy.write_text(
        RuntimePolicy(
            digests={
                "boot_aggregate": (boot,),
                str(signed): (hashlib.sha256(signed.read_bytes()).hexdigest(),),
            },
            log_hash_alg="sha256",
        ).serialize()
    )
    base = ["log", "verify", "--state", str(log), "--runtime-policy", str(policy), "--json"]
    ok = cli(*base, "--digestlist", str(list_file))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    without = cli(*base)
    assert without.returncode == 1
    findings = json.loads(without.stdout)["findings"]
    assert [f["path"] for f in findings] == ["imaguard:digestlist:true:add"]
    other = d.base / "other.list"
    other.write_bytes(
        sign_list(
            dlf.DigestList.build("sha256", {hashlib.sha256(b"x").digest(): "/x"}),
            imaguard.load_private_key(d.base / "lists" / "private.pem"),
        )
    )
    wrong = cli(*base, "--digestlist", str(other))
    assert wrong.returncode == 1
    messages = [f["message"] for f in json.loads(wrong.stdout)["findings"]]
    assert any("is none of the lists given" in m for m in messages), messages
