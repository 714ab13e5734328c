"""The policy service (docs/protocol.md, "Operations"; README, "Several owners, one machine"):
owners change their own policies; locks, versions and signatures hold; every change is
measured, every request audited; the state survives a restart and a seal lapses at reboot.

A real Guard (build_guard) on a tmp state directory; peers are this process with a chosen
uid (the owners here match on uids only, which needs no /proc read).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import imaguard
from imaguard.core import Guard, MemoryAudit
from imaguard.formats.template import decode_digest_field
from imaguard.policy import Lock
from imaguard.service import (
    Config,
    ConfigError,
    Peer,
    PolicyService,
    ProtocolError,
    _policies,
    apply_state,
    build_guard,
    build_policy_set,
    load_config,
)
from imaguard.service._policies import STATE_FILE, boot_id

ALPHA, BETA, BOTH, NOBODY = 1001, 1002, 1003, 1004

CONFIG = """
watch = ["{tmp}"]
state = "{tmp}/state"
socket = "{tmp}/c.sock"
owners = "{tmp}/owners.d"
[[policy]]
name = "base"
owner = "alpha"
rules = "#@ version 2\\nmeasure func=BPRM_CHECK\\n"
"""

FILE = "measure func=FILE_CHECK\n"
MMAP = "measure func=MMAP_CHECK\n"
AUDIT = "audit func=BPRM_CHECK\n"


def sha(text: str | bytes) -> bytes:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).digest()


@dataclass
class Env:
    tmp: Path
    cfg: Config
    guard: Guard
    service: PolicyService
    audit: MemoryAudit
    ec_key: imaguard.PrivateKey
    rsa_key: imaguard.PrivateKey
    flushes: list[int] = field(default_factory=list)
    _peers: list[Peer] = field(default_factory=list)

    @property
    def state_file(self) -> Path:
        return Path(self.cfg.state) / STATE_FILE

    def state(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.state_file.read_text())
        return doc

    def state_bytes(self) -> bytes | None:
        return self.state_file.read_bytes() if self.state_file.exists() else None

    def peer(self, uid: int) -> Peer:
        p = Peer(pid=os.getpid(), uid=uid, gid=uid, pidfd=os.pidfd_open(os.getpid()))
        self._peers.append(p)
        return p

    def change(self, uid: int, op: str, **req: Any) -> dict[str, Any]:
        return self.service.change(self.peer(uid), op, req)

    def refused(self, uid: int, op: str, code: str, **req: Any) -> ProtocolError:
        with pytest.raises(ProtocolError) as e:
            self.service.change(self.peer(uid), op, req)
        assert e.value.code == code, e.value.message
        return e.value

    def sign(self, text: str, key: imaguard.PrivateKey | None = None) -> str:
        value = imaguard.sign_bytes(text.encode(), key or self.ec_key).serialize()
        return base64.b64encode(value).decode()

    def measured(self) -> list[tuple[str, bytes]]:
        out = []
        for entry in self.guard.log.entries():
            name = entry.name.decode()
            if name.startswith("imaguard:policy:"):
                d = entry.field("d-ng")
                assert d is not None
                _, algo, digest = decode_digest_field(d)
                assert algo.name == "sha256"
                out.append((name, digest))
        return out

    def records(self, result: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.audit.records
            if r.get("type") == "POLICY_CHANGE" and result in (None, r["result"])
        ]

    def looks(self, name: str) -> tuple[str, int, str, str | None]:
        pset = self.guard.policies
        return (
            pset.policy(name).text(),
            pset.version(name),
            str(pset.lock(name)),
            pset.owner(name),
        )


def write_owners(tmp: Path, ec_dir: Path) -> None:
    d = tmp / "owners.d"
    d.mkdir(exist_ok=True)
    (d / "alpha.toml").write_text(
        f'name = "alpha"\nuids = [{ALPHA}]\nkeyring = "{ec_dir / "cert.der"}"\n'
    )
    (d / "beta.toml").write_text(f'name = "beta"\nuids = [{BETA}]\n')
    (d / "gamma.toml").write_text(f'name = "gamma"\nuids = [{BOTH}]\n')
    (d / "delta.toml").write_text(f'name = "delta"\nuids = [{BOTH}]\n')


def write_config(tmp: Path, extra: str = "") -> Config:
    path = tmp / "imaguard.toml"
    path.write_text(CONFIG.replace("{tmp}", str(tmp)) + extra)
    return load_config(path)


def make_env(
    tmp: Path, ec_dir: Path, ec_key: imaguard.PrivateKey, rsa_key: imaguard.PrivateKey
) -> Env:
    write_owners(tmp, ec_dir)
    cfg = write_config(tmp)
    guard = build_guard(cfg)
    assert guard.audit is not None
    guard.audit.close()
    audit = MemoryAudit()
    guard.audit = audit
    flushes: list[int] = []
    service = PolicyService(cfg, lambda: guard, flush=lambda: flushes.append(1))
    return Env(tmp, cfg, guard, service, audit, ec_key, rsa_key, flushes)


@pytest.fixture
def env(
    tmp_path: Path, ec_dir: Path, ec_key: imaguard.PrivateKey, rsa_key: imaguard.PrivateKey
) -> Iterator[Env]:
    e = make_env(tmp_path, ec_dir, ec_key, rsa_key)
    yield e
    for p in e._peers:
        p.close()
    e.guard.close()


@pytest.fixture
def ec_dir(keys_dir: dict[str, Path]) -> Path:
    return keys_dir["ecdsa-p256"]


# --------------------------------------------------------------------------------------
# The right owner
# --------------------------------------------------------------------------------------


def test_the_owner_loads_replaces_appends_and_seals(env: Env) -> None:
    r = env.change(ALPHA, "load", name="mine", text=FILE, source="mine.policy")
    assert {k: r[k] for k in ("name", "owner", "lock", "version", "rules", "origin")} == {
        "name": "mine",
        "owner": "alpha",
        "lock": "open",
        "version": 1,
        "rules": 1,
        "origin": "socket",
    }
    assert r["digest"] == "sha256:" + sha(env.guard.policies.policy("mine").text()).hex()
    assert env.guard.policies.names() == ["base", "mine"]
    rec = env.state()["policies"]["mine"]
    assert (rec["origin"], rec["owner"], rec["lock"], rec["version"], rec["text"]) == (
        "socket",
        "alpha",
        "open",
        1,
        FILE,
    )
    assert env.state()["versions"] == {"base": 2, "mine": 1}

    r = env.change(ALPHA, "replace", name="mine", text=FILE + MMAP)
    assert (r["version"], r["rules"], r["lock"]) == (2, 2, "open")
    assert [x.canonical() for x in env.guard.policies.policy("mine").rules] == [
        "measure func=FILE_CHECK",
        "measure func=MMAP_CHECK",
    ]

    r = env.change(ALPHA, "append", name="mine", text=AUDIT)
    assert (r["version"], r["rules"]) == (3, 3)
    assert [x.canonical() for x in env.guard.policies.policy("mine").rules][-1] == (
        "audit func=BPRM_CHECK"
    )
    assert env.state()["policies"]["mine"]["version"] == 3

    r = env.change(ALPHA, "seal", name="mine")
    assert (r["lock"], r["version"]) == ("sealed", 3)
    assert env.guard.policies.lock("mine") is Lock.SEALED
    rec = env.state()["policies"]["mine"]
    assert (rec["lock"], rec["sealed_boot"], rec["lock_before_seal"]) == (
        "sealed",
        boot_id(),
        "open",
    )
    assert len(env.flushes) == 4
    assert [r["op"] for r in env.records("accepted")] == ["load", "replace", "append", "seal"]


def test_the_owner_removes_an_open_policy(env: Env) -> None:
    env.change(ALPHA, "load", name="tmp", text=FILE, version=4)
    assert env.change(ALPHA, "remove", name="tmp") == {"name": "tmp", "removed": True}
    assert "tmp" not in env.guard.policies.names()
    st = env.state()
    assert "tmp" not in st["policies"]
    assert st["versions"] == {"base": 2, "tmp": 4}
    assert env.measured()[-1] == ("imaguard:policy:tmp:remove", sha(b""))
    [rec] = [r for r in env.records("accepted") if r["op"] == "remove"]
    assert "version" not in rec
    assert rec["owner"] == "alpha"


def test_every_change_is_measured_with_the_text_sent(env: Env) -> None:
    env.change(ALPHA, "load", name="mine", text=FILE)
    env.change(ALPHA, "replace", name="mine", text=FILE + MMAP)
    env.change(ALPHA, "append", name="mine", text=AUDIT)
    sealed_text = env.guard.policies.policy("mine").text()
    env.change(ALPHA, "seal", name="mine")
    env.change(ALPHA, "seal", name="base")
    assert env.measured() == [
        ("imaguard:policy:mine:load", sha(FILE)),
        ("imaguard:policy:mine:replace", sha(FILE + MMAP)),
        ("imaguard:policy:mine:append", sha(AUDIT)),
        ("imaguard:policy:mine:seal", sha(sealed_text)),
        ("imaguard:policy:base:seal", sha(env.guard.policies.policy("base").text())),
    ]
    accepted = env.records("accepted")
    assert [r["digest"] for r in accepted] == ["sha256:" + d.hex() for _, d in env.measured()]


# --------------------------------------------------------------------------------------
# Authorisation
# --------------------------------------------------------------------------------------


def test_another_owner_is_refused_and_nothing_changes(env: Env) -> None:
    env.change(ALPHA, "load", name="mine", text=FILE)
    before = (env.looks("mine"), env.state_bytes(), env.measured(), len(env.flushes))
    for op, req in (
        ("replace", {"text": MMAP}),
        ("append", {"text": MMAP}),
        ("remove", {}),
        ("seal", {}),
    ):
        e = env.refused(BETA, op, "permission-denied", name="mine", **req)
        assert f"uid {BETA}" in e.message
        assert "may not act for owner 'alpha'" in e.message
    e = env.refused(BETA, "load", "permission-denied", name="other", text=FILE, owner="alpha")
    assert "'alpha'" in e.message
    assert (env.looks("mine"), env.state_bytes(), env.measured(), len(env.flushes)) == before
    assert "other" not in env.guard.policies.names()
    refused = env.records("refused")
    assert [r["op"] for r in refused] == ["replace", "append", "remove", "seal", "load"]
    for r in refused:
        assert r["error"] == "permission-denied"
        # the owner of the policy the request touched (a load names none it may act for)
        assert r["owner"] == ("alpha" if r["op"] != "load" else None)
        assert r["policy"] in ("mine", "other")
        assert r["peer"]["uid"] == BETA
        assert r["peer"]["pid"] == os.getpid()
        assert "digest" not in r


def test_root_acts_for_no_owner(env: Env) -> None:
    env.change(ALPHA, "load", name="mine", text=FILE)
    e = env.refused(0, "load", "permission-denied", name="rootp", text=FILE)
    assert "acts for no owner" in e.message
    env.refused(0, "replace", "permission-denied", name="mine", text=MMAP)
    env.refused(0, "seal", "permission-denied", name="base")
    assert env.looks("mine")[1] == 1
    assert "rootp" not in env.guard.policies.names()


def test_ambiguous_owner_and_the_owner_parameter(env: Env) -> None:
    e = env.refused(BOTH, "load", "ambiguous-owner", name="p", text=FILE)
    assert "delta, gamma" in e.message
    assert env.change(BOTH, "load", name="p", text=FILE, owner="delta")["owner"] == "delta"
    assert env.guard.policies.owner("p") == "delta"
    env.refused(BOTH, "load", "permission-denied", name="q", text=FILE, owner="alpha")
    env.refused(BOTH, "load", "bad-request", name="q", text=FILE, owner=7)
    # later changes are taken for the policy's owner: no `owner` needed
    assert env.change(BOTH, "replace", name="p", text=MMAP)["version"] == 2
    env.refused(ALPHA, "replace", "permission-denied", name="p", text=FILE)
    assert env.records("refused")[0]["error"] == "ambiguous-owner"


def test_unknown_policy(env: Env) -> None:
    for op in ("replace", "append", "remove", "seal"):
        env.refused(ALPHA, op, "no-such-policy", name="ghost", text=FILE)
    with pytest.raises(ProtocolError) as e:
        env.service.entry("ghost")
    assert e.value.code == "no-such-policy"


def test_a_peer_without_a_pidfd_is_gone(env: Env) -> None:
    p = Peer(pid=os.getpid(), uid=ALPHA, gid=ALPHA, pidfd=None)
    with pytest.raises(ProtocolError) as e:
        env.service.change(p, "load", {"name": "mine", "text": FILE})
    assert e.value.code == "peer-gone"
    assert "mine" not in env.guard.policies.names()
    assert env.records("refused")[0]["error"] == "peer-gone"


@pytest.mark.parametrize(
    ("req", "words"),
    [
        ({}, "name:"),
        ({"name": ""}, "name:"),
        ({"name": 3}, "name:"),
        ({"name": "two words"}, "bad policy name"),
        ({"name": "a/b"}, "bad policy name"),
        ({"name": "a=b"}, "bad policy name"),
        ({"name": "x" * 129}, "bad policy name"),
        ({"name": "p"}, "text:"),
        ({"name": "p", "text": 5}, "text:"),
        ({"name": "p", "text": "#" * ((1 << 19) + 1)}, "text: at most"),
        ({"name": "p", "text": FILE, "version": 0}, "version:"),
        ({"name": "p", "text": FILE, "version": "3"}, "version:"),
        ({"name": "p", "text": FILE, "version": True}, "version:"),
        ({"name": "p", "text": FILE, "version": 1 << 62}, "version:"),
        ({"name": "p", "text": FILE, "lock": "tight"}, "lock:"),
        ({"name": "p", "text": FILE, "signature": "!!not base64!!"}, "signature:"),
    ],
)
def test_bad_requests(env: Env, req: dict[str, Any], words: str) -> None:
    before = env.state_bytes()
    e = env.refused(ALPHA, "load", "bad-request", **req)
    assert words in e.message
    assert env.guard.policies.names() == ["base"]
    assert env.state_bytes() == before
    [rec] = env.records("refused")
    assert (rec["op"], rec["error"]) == ("load", "bad-request")


def test_a_bad_request_with_a_name_is_audited(env: Env) -> None:
    env.refused(ALPHA, "load", "bad-request", name="p", text=5)
    [rec] = env.records("refused")
    assert (rec["op"], rec["policy"], rec["error"], rec["owner"]) == (
        "load",
        "p",
        "bad-request",
        "alpha",
    )


def test_a_request_refused_for_its_name_is_audited(env: Env) -> None:
    env.refused(ALPHA, "load", "bad-request", name="two words", text=FILE)
    env.refused(ALPHA, "remove", "bad-request", name=7)
    first, second = env.records("refused")
    assert (first["policy"], first["error"], first["owner"]) == ("two words", "bad-request", None)
    assert (second["op"], second["policy"]) == ("remove", "7")


# --------------------------------------------------------------------------------------
# exists, config policies, locks, versions
# --------------------------------------------------------------------------------------


def test_exists(env: Env) -> None:
    env.change(ALPHA, "load", name="mine", text=FILE)
    env.refused(ALPHA, "load", "exists", name="mine", text=MMAP, version=9)
    env.refused(BETA, "load", "exists", name="mine", text=MMAP)
    env.refused(ALPHA, "load", "exists", name="base", text=MMAP, version=9)
    assert env.looks("mine")[:2] == (env.guard.policies.policy("mine").text(), 1)
    assert env.state()["versions"] == {"base": 2, "mine": 1}


def test_config_policies_are_changed_in_the_config(env: Env) -> None:
    before = (env.looks("base"), env.state_bytes())
    for op in ("replace", "append"):
        e = env.refused(ALPHA, op, "config-policy", name="base", text=MMAP, version=9)
        assert env.cfg.source in e.message
    env.refused(ALPHA, "remove", "config-policy", name="base")
    env.refused(BETA, "seal", "permission-denied", name="base")
    assert (env.looks("base"), env.state_bytes()) == before


def test_a_config_policy_may_be_sealed_and_the_seal_persists(env: Env) -> None:
    text = env.guard.policies.policy("base").text()
    r = env.change(ALPHA, "seal", name="base")
    assert (r["lock"], r["origin"], r["version"]) == ("sealed", "config", 2)
    rec = env.state()["policies"]["base"]
    assert (rec["origin"], rec["owner"], rec["lock"], rec["version"], rec["text"]) == (
        "config",
        "alpha",
        "sealed",
        2,
        text,
    )
    assert (rec["sealed_boot"], rec["lock_before_seal"]) == (boot_id(), "open")
    env.refused(ALPHA, "seal", "locked", name="base")
    env.refused(ALPHA, "replace", "config-policy", name="base", text=MMAP, version=9)


def test_a_sealed_policy_takes_no_change(env: Env) -> None:
    env.change(ALPHA, "load", name="s", text=FILE, lock="sealed")
    rec = env.state()["policies"]["s"]
    assert (rec["lock"], rec["sealed_boot"], rec["lock_before_seal"]) == (
        "sealed",
        boot_id(),
        "open",
    )
    before = (env.looks("s"), env.state_bytes())
    for op in ("replace", "append"):
        e = env.refused(ALPHA, op, "locked", name="s", text=FILE + MMAP, version=5)
        assert "sealed" in e.message
    env.refused(ALPHA, "remove", "locked", name="s")
    assert "already sealed" in env.refused(ALPHA, "seal", "locked", name="s").message
    assert (env.looks("s"), env.state_bytes()) == before
    assert [m for m, _ in env.measured()] == ["imaguard:policy:s:load"]


def test_append_only_keeps_every_rule(env: Env) -> None:
    env.change(ALPHA, "load", name="ao", text=FILE, lock="append-only")
    for text in (MMAP, AUDIT + FILE, MMAP + FILE, "#@ version 9\n" + AUDIT):
        e = env.refused(ALPHA, "replace", "locked", name="ao", text=text)
        assert "append-only" in e.message
    assert env.looks("ao")[1] == 1
    assert env.change(ALPHA, "replace", name="ao", text=FILE + MMAP)["version"] == 2
    assert env.change(ALPHA, "append", name="ao", text=AUDIT)["version"] == 3
    assert env.looks("ao")[2] == "append-only"
    assert len(env.guard.policies.policy("ao")) == 3
    env.refused(ALPHA, "remove", "locked", name="ao")
    assert env.state()["policies"]["ao"]["lock"] == "append-only"


def test_signed_only_needs_a_signature(env: Env) -> None:
    text = "#@ version 3\n" + FILE
    e = env.refused(ALPHA, "load", "bad-signature", name="so", text=text, lock="signed-only")
    assert "needs a signature" in e.message
    assert "so" not in env.guard.policies.names()


def test_rollback(env: Env) -> None:
    env.change(ALPHA, "load", name="v", text=FILE, version=5)
    for req in ({"version": 5}, {"version": 4}, {"text": "#@ version 3\n" + MMAP}):
        e = env.refused(ALPHA, "replace", "rollback", name="v", **{"text": MMAP, **req})
        assert "not newer than 5" in e.message
    env.refused(ALPHA, "append", "rollback", name="v", text=MMAP, version=5)
    assert env.change(ALPHA, "replace", name="v", text=MMAP, version=6)["version"] == 6
    assert env.change(ALPHA, "replace", name="v", text=FILE)["version"] == 7  # old + 1
    env.change(ALPHA, "remove", name="v")
    # the name's last version outlives the policy
    for version in (None, 1, 7):
        e = env.refused(ALPHA, "load", "rollback", name="v", text=FILE, version=version)
        assert "not newer than 7" in e.message
    env.refused(BETA, "load", "rollback", name="v", text=FILE, version=7)
    assert env.change(BETA, "load", name="v", text=FILE, version=8)["owner"] == "beta"
    assert env.state()["versions"] == {"base": 2, "v": 8}


def test_the_text_version_is_the_default(env: Env) -> None:
    assert env.change(ALPHA, "load", name="t", text="#@ version 12\n" + FILE)["version"] == 12
    assert env.change(ALPHA, "replace", name="t", text="#@ version 20\n" + MMAP)["version"] == 20
    assert env.change(ALPHA, "load", name="u", text=FILE, version=3)["version"] == 3


def test_an_empty_policy_is_refused(env: Env) -> None:
    for text in ("", "# nothing but a comment\n"):
        env.refused(ALPHA, "load", "bad-policy", name="empty", text=text)
    assert "empty" not in env.guard.policies.names()


def test_a_policy_that_does_not_parse(env: Env) -> None:
    e = env.refused(ALPHA, "load", "bad-policy", name="x", text=FILE + "frobnicate\n")
    assert "<load x>:2:" in e.message
    env.change(ALPHA, "load", name="y", text=FILE)
    e = env.refused(
        ALPHA, "replace", "bad-policy", name="y", text="measure fowner=abc\n", source="y.pol"
    )
    assert "y.pol:1:" in e.message
    assert "x" not in env.guard.policies.names()
    assert env.looks("y")[1] == 1


# --------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------


def test_a_signed_only_policy_from_the_owners_key(env: Env) -> None:
    v3 = "#@ version 3\n" + FILE
    sig3 = env.sign(v3)
    r = env.change(ALPHA, "load", name="so", text=v3, lock="signed-only", signature=sig3)
    assert (r["lock"], r["version"], r["owner"]) == ("signed-only", 3, "alpha")
    assert env.state()["policies"]["so"]["signature"] == sig3

    v4 = "#@ version 4\n" + FILE + MMAP
    sig4 = env.sign(v4)
    assert env.change(ALPHA, "replace", name="so", text=v4, signature=sig4)["version"] == 4
    assert env.state()["policies"]["so"]["signature"] == sig4
    before = (env.looks("so"), env.state_bytes())

    v5 = "#@ version 5\n" + MMAP
    env.refused(ALPHA, "replace", "bad-signature", name="so", text=v5)
    env.refused(ALPHA, "replace", "bad-signature", name="so", text=v5, signature=sig4)
    env.refused(
        ALPHA,
        "replace",
        "bad-signature",
        name="so",
        text=v5,
        signature=env.sign(v5, env.rsa_key),
    )
    unversioned = MMAP
    env.refused(
        ALPHA, "replace", "locked", name="so", text=unversioned, signature=env.sign(unversioned)
    )
    env.refused(ALPHA, "replace", "locked", name="so", text=v5, signature=env.sign(v5), version=6)
    env.refused(ALPHA, "append", "bad-signature", name="so", text=AUDIT)
    env.refused(ALPHA, "remove", "locked", name="so")
    assert (env.looks("so"), env.state_bytes()) == before


def test_a_signature_from_another_key_is_refused(env: Env) -> None:
    before = env.state_bytes()
    v3 = "#@ version 3\n" + FILE
    for lock in ("signed-only", "open"):
        e = env.refused(
            ALPHA,
            "load",
            "bad-signature",
            name="so",
            text=v3,
            lock=lock,
            signature=env.sign(v3, env.rsa_key),
        )
        assert "does not verify" in e.message
        assert "owner 'alpha'" in e.message
    assert "so" not in env.guard.policies.names()
    assert env.state_bytes() == before


def test_a_signature_for_an_owner_without_a_keyring(env: Env) -> None:
    v3 = "#@ version 3\n" + FILE
    e = env.refused(
        BETA,
        "load",
        "bad-signature",
        name="so",
        text=v3,
        lock="signed-only",
        signature=env.sign(v3),
    )
    assert "no policy keyring" in e.message


def test_a_signed_only_load_must_carry_its_version(env: Env) -> None:
    env.refused(
        ALPHA, "load", "locked", name="so", text=FILE, lock="signed-only", signature=env.sign(FILE)
    )
    v3 = "#@ version 3\n" + FILE
    env.refused(
        ALPHA,
        "load",
        "locked",
        name="so",
        text=v3,
        lock="signed-only",
        signature=env.sign(v3),
        version=4,
    )
    assert "so" not in env.guard.policies.names()


def test_an_open_policy_may_be_signed(env: Env) -> None:
    sig = env.sign(FILE)
    r = env.change(ALPHA, "load", name="o", text=FILE, signature=sig)
    assert r["lock"] == "open"
    assert env.state()["policies"]["o"]["signature"] == sig
    env.change(ALPHA, "replace", name="o", text=MMAP)
    assert env.state()["policies"]["o"]["signature"] is None


# --------------------------------------------------------------------------------------
# Audit into the state's audit.jsonl, reading, flush
# --------------------------------------------------------------------------------------


def test_changes_and_refusals_reach_audit_jsonl(
    tmp_path: Path, ec_dir: Path, ec_key: imaguard.PrivateKey, rsa_key: imaguard.PrivateKey
) -> None:
    write_owners(tmp_path, ec_dir)
    cfg = write_config(tmp_path)
    guard = build_guard(cfg)
    service = PolicyService(cfg, lambda: guard)
    alpha = Peer(os.getpid(), ALPHA, ALPHA, os.pidfd_open(os.getpid()))
    beta = Peer(os.getpid(), BETA, BETA, os.pidfd_open(os.getpid()))
    try:
        service.change(alpha, "load", {"name": "mine", "text": FILE, "source": "m.pol"})
        with pytest.raises(ProtocolError):
            service.change(beta, "remove", {"name": "mine"})
        assert guard.audit is not None
        guard.audit.flush()
        lines = (Path(cfg.state) / "audit.jsonl").read_text().splitlines()
    finally:
        alpha.close()
        beta.close()
        guard.close()
    records = [r for r in map(json.loads, lines) if r.get("type") == "POLICY_CHANGE"]
    ok, no = records
    assert (ok["op"], ok["policy"], ok["owner"], ok["result"]) == (
        "load",
        "mine",
        "alpha",
        "accepted",
    )
    assert (ok["version"], ok["lock"], ok["source"]) == (1, "open", "m.pol")
    assert ok["digest"] == "sha256:" + sha(FILE).hex()
    assert ok["peer"]["uid"] == ALPHA
    assert ok["peer"]["pid"] == os.getpid()
    assert (no["op"], no["policy"], no["result"], no["error"], no["owner"]) == (
        "remove",
        "mine",
        "refused",
        "permission-denied",
        "alpha",  # whose policy the refused request touched
    )
    assert no["peer"]["uid"] == BETA
    assert "may not act" in no["message"]


def test_policies_and_entries(env: Env) -> None:
    env.change(BETA, "load", name="b", text=FILE + MMAP)
    entries = env.service.policies()
    assert [(e["name"], e["owner"], e["origin"], e["rules"]) for e in entries] == [
        ("base", "alpha", "config", 1),
        ("b", "beta", "socket", 2),
    ]
    shown = env.service.entry("b", text=True)
    assert shown["text"] == env.guard.policies.policy("b").text()
    assert shown["digest"] == "sha256:" + sha(shown["text"]).hex()
    assert "text" not in entries[1]


def test_read_access_owners(
    tmp_path: Path, ec_dir: Path, ec_key: imaguard.PrivateKey, rsa_key: imaguard.PrivateKey
) -> None:
    write_owners(tmp_path, ec_dir)
    path = tmp_path / "imaguard.toml"
    path.write_text(
        CONFIG.replace("{tmp}", str(tmp_path)).replace(
            'owners = "', 'read_access = "owners"\nowners = "', 1
        )
    )
    cfg = load_config(path)
    assert cfg.read_access == "owners"
    service = PolicyService(cfg, lambda: pytest.fail("no guard needed"))
    peers = [Peer(os.getpid(), u, u, os.pidfd_open(os.getpid())) for u in (ALPHA, 0, NOBODY)]
    try:
        service.may_read(peers[0], "policies")
        service.may_read(peers[1], "status")  # root may always ask status
        for p, op in ((peers[1], "policies"), (peers[2], "status"), (peers[2], "show")):
            with pytest.raises(ProtocolError) as e:
                service.may_read(p, op)
            assert e.value.code == "permission-denied"
            assert 'read_access = "owners"' in e.value.message
    finally:
        for p in peers:
            p.close()


def test_read_access_everyone(env: Env) -> None:
    env.service.may_read(env.peer(NOBODY), "policies")
    env.service.may_read(Peer(1, NOBODY, NOBODY, None), "show")  # no identity needed


# --------------------------------------------------------------------------------------
# Persistence: apply_state on a fresh PolicySet from the same config
# --------------------------------------------------------------------------------------


def fill(env: Env) -> dict[str, tuple[str, int, str, str | None]]:
    """Policies of every kind, one sealed this boot; what they look like now."""
    env.change(ALPHA, "load", name="o", text=FILE)
    env.change(BETA, "load", name="ao", text=FILE, lock="append-only", version=4)
    env.change(BETA, "append", name="ao", text=MMAP)
    env.change(BETA, "seal", name="ao")
    v3 = "#@ version 3\n" + AUDIT
    env.change(ALPHA, "load", name="so", text=v3, lock="signed-only", signature=env.sign(v3))
    env.change(ALPHA, "seal", name="base")
    env.change(ALPHA, "load", name="gone", text=FILE, version=9)
    env.change(ALPHA, "remove", name="gone")
    return {n: env.looks(n) for n in env.guard.policies.names()}


def restored(cfg: Config) -> dict[str, tuple[str, int, str, str | None]]:
    pset, _ = build_policy_set(cfg, with_state=False)
    apply_state(pset, cfg)
    return {
        n: (pset.policy(n).text(), pset.version(n), str(pset.lock(n)), pset.owner(n))
        for n in pset.names()
    }


def test_the_state_comes_back_this_boot(env: Env) -> None:
    now = fill(env)
    assert now["ao"][2] == "sealed"
    assert now["base"][2] == "sealed"
    assert restored(env.cfg) == now
    pset, _ = build_policy_set(env.cfg)  # what the daemon does at start
    assert pset.names() == ["base", "o", "ao", "so"]


def test_seals_lapse_at_reboot(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    now = fill(env)
    monkeypatch.setattr(_policies, "boot_id", lambda: "another-boot")
    after = restored(env.cfg)
    assert after["ao"] == (*now["ao"][:2], "append-only", "beta")  # its lock before the seal
    assert after["base"] == (*now["base"][:2], "open", "alpha")  # the config's lock
    assert after["o"] == now["o"]
    assert after["so"] == now["so"]


def test_a_sealed_config_policy_keeps_its_sealed_text_this_boot(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.change(ALPHA, "seal", name="base")
    sealed = env.looks("base")
    cfg = Path(env.cfg.source)
    cfg.write_text(cfg.read_text().replace("measure func=BPRM_CHECK", "audit func=BPRM_CHECK"))
    cfg2 = load_config(cfg)
    assert restored(cfg2)["base"] == sealed
    monkeypatch.setattr(_policies, "boot_id", lambda: "another-boot")
    text, version, lock, owner = restored(cfg2)["base"]
    assert (text.strip(), version, lock, owner) == ("audit func=BPRM_CHECK", 2, "open", "alpha")


def test_a_restarted_service_keeps_versions_and_locks(env: Env) -> None:
    fill(env)
    env.guard.close()
    guard = build_guard(env.cfg)
    env.guard = guard
    service = PolicyService(env.cfg, lambda: guard)
    alpha = env.peer(ALPHA)
    for op, name, code in (
        ("load", "gone", "rollback"),
        ("replace", "ao", "locked"),
        ("replace", "so", "bad-signature"),
        ("load", "o", "exists"),
    ):
        peer = env.peer(BETA) if name == "ao" else alpha
        with pytest.raises(ProtocolError) as e:
            service.change(peer, op, {"name": name, "text": MMAP, "version": 9})
        assert e.value.code == code
    assert service.entry("o")["origin"] == "socket"
    assert service.entry("base")["origin"] == "config"


def test_a_config_version_older_than_one_seen_is_rollback(env: Env) -> None:
    env.change(ALPHA, "load", name="later", text=FILE, version=5)
    env.change(ALPHA, "remove", name="later")
    extra = '[[policy]]\nname = "later"\nowner = "alpha"\nrules = "#@ version 3\\nmeasure"\n'
    cfg = write_config(env.tmp, extra)
    with pytest.raises(ConfigError) as e:
        build_policy_set(cfg)
    assert e.value.key == "policy[1]"
    assert "rollback refused" in e.value.problem
    assert "version 3 is older than version 5" in e.value.problem
    cfg = write_config(env.tmp, extra.replace("version 3", "version 6"))
    assert build_policy_set(cfg)[0].version("later") == 6


def test_a_config_file_that_lowers_its_own_version_is_rollback(env: Env) -> None:
    assert env.state()["versions"]["base"] == 2  # the config's '#@ version' is remembered
    cfg = Path(env.cfg.source)
    cfg.write_text(cfg.read_text().replace("#@ version 2", "#@ version 1"))
    with pytest.raises(ConfigError) as e:
        build_policy_set(load_config(cfg))
    assert e.value.key == "policy[0]"
    assert "version 1 is older than version 2" in e.value.problem


def test_a_socket_policy_name_taken_by_the_config(env: Env) -> None:
    env.change(BETA, "load", name="mine", text=FILE)
    cfg = write_config(env.tmp, '[[policy]]\nname = "mine"\nowner = "alpha"\nrules = "measure"\n')
    with pytest.raises(ConfigError) as e:
        build_policy_set(cfg)
    assert e.value.key == "policy"
    assert "'mine' is already a policy loaded over the socket by owner 'beta'" in e.value.problem


def test_a_stored_signature_that_no_longer_verifies(env: Env) -> None:
    v3 = "#@ version 3\n" + FILE
    env.change(ALPHA, "load", name="so", text=v3, lock="signed-only", signature=env.sign(v3))
    doc = env.state()
    doc["policies"]["so"]["signature"] = env.sign(v3, env.rsa_key)
    env.state_file.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as e:
        restored(env.cfg)
    assert e.value.key == "state"
    assert "'so'" in e.value.problem


def test_resealing_a_config_policy_after_reboot_seals_the_current_text(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.change(ALPHA, "seal", name="base")  # boot A: the record keeps the sealed text
    cfg = Path(env.cfg.source)
    cfg.write_text(
        cfg.read_text().replace(
            "version 2\\nmeasure func=BPRM_CHECK", "version 3\\naudit func=BPRM_CHECK"
        )
    )
    monkeypatch.setattr(_policies, "boot_id", lambda: "boot-b")  # reboot
    env.guard.close()
    env.guard = guard = build_guard(load_config(cfg))
    assert env.looks("base")[:3] == (guard.policies.policy("base").text(), 3, "open")
    service = PolicyService(load_config(cfg), lambda: guard)
    service.change(env.peer(ALPHA), "seal", {"name": "base"})  # boot B: sealed again
    now = env.looks("base")
    assert now[0].strip() == "audit func=BPRM_CHECK"
    assert restored(load_config(cfg))["base"] == now  # a daemon restart, still boot B
