"""Owners and peers (docs/protocol.md; README, "Several owners, one machine"): owner files,
who matches, the systemd unit of a cgroup, and the kernel's word on the peer."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imaguard.service import ConfigError, Owner, Peer, load_owners, parse_owner
from imaguard.service._owners import PeerGoneError, identify, owners_for, unit_of_cgroup

# --------------------------------------------------------------------------------------
# parse_owner
# --------------------------------------------------------------------------------------


def test_parse_owner_happy_path(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    owner = parse_owner(
        """
name = "plugins"
uids = [1001, 1002]
gids = [27]
units = ["plugin-host.service"]
exes = ["/usr/bin/plugin-host"]
keyring = "keys"
""",
        source="plugins.toml",
        base=str(tmp_path),
    )
    assert owner == Owner(
        name="plugins",
        source="plugins.toml",
        uids=frozenset({1001, 1002}),
        gids=frozenset({27}),
        units=frozenset({"plugin-host.service"}),
        exes=frozenset({"/usr/bin/plugin-host"}),
        keyring=str(keys),
    )


def test_parse_owner_minimal_and_bytes() -> None:
    owner = parse_owner(b'name = "ops"\nuids = [0]\n', source="ops.toml")
    assert (owner.name, owner.uids, owner.keyring) == ("ops", frozenset({0}), None)
    assert owner.gids == frozenset()
    assert owner.units == owner.exes == frozenset()


def test_parse_owner_absolute_keyring_without_base(tmp_path: Path) -> None:
    ring = tmp_path / "ring.der"
    ring.write_bytes(b"")
    owner = parse_owner(f'name = "a"\nuids = [1]\nkeyring = "{ring}"\n', source="a.toml")
    assert owner.keyring == str(ring)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('name = "a"\nuids = [1]\nusers = [1]\n', "users", "unknown key"),
        ("uids = [1]\n", "name", "missing"),
        ('name = ""\nuids = [1]\n', "name", "missing"),
        ("name = 3\nuids = [1]\n", "name", "missing"),
        ('name = "two words"\nuids = [1]\n', "name", "bad owner name"),
        ('name = "a=b"\nuids = [1]\n', "name", "bad owner name"),
        ('name = "a/b"\nuids = [1]\n', "name", "bad owner name"),
        ('name = "a"\n', "uids", "at least one of uids, gids, units or exes"),
        ('name = "a"\nuids = []\ngids = []\nunits = []\nexes = []\n', "uids", "at least one"),
        ('name = "a"\nuids = ["1001"]\n', "uids", "non-negative integers"),
        ('name = "a"\nuids = [-1]\n', "uids", "non-negative integers"),
        ('name = "a"\nuids = [true]\n', "uids", "non-negative integers"),
        ('name = "a"\nuids = 1001\n', "uids", "non-negative integers"),
        ('name = "a"\ngids = [1.5]\n', "gids", "non-negative integers"),
        ('name = "a"\nunits = [""]\n', "units", "non-empty strings"),
        ('name = "a"\nexes = ["usr/bin/x"]\n', "exes", "absolute paths"),
        ('name = "a"\nexes = [3]\n', "exes", "non-empty strings"),
        ('name = "a"\nuids = [1]\nkeyring = "/nonexistent/keys"\n', "keyring", "does not exist"),
        ('name = "a"\nuids = [1]\nkeyring = 5\n', "keyring", "must be a path"),
        ('name = "a"\nuids = [1]\nkeyring = ""\n', "keyring", "must be a path"),
        ('name = "a\nuids = [1]\n', "(syntax)", "not valid TOML"),
    ],
)
def test_parse_owner_errors_name_the_key(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_owner(text, source="/etc/imaguard/owners.d/a.toml")
    assert e.value.key == key
    assert words in e.value.problem
    assert str(e.value).startswith(f"/etc/imaguard/owners.d/a.toml: {key}: ")


def test_parse_owner_relative_keyring_is_resolved_against_base(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_owner('name = "a"\nuids = [1]\nkeyring = "keys"\n', source="a", base=str(tmp_path))
    assert e.value.key == "keyring"
    assert str(tmp_path / "keys") in e.value.problem


def test_parse_owner_refuses_non_utf8() -> None:
    with pytest.raises(ConfigError) as e:
        parse_owner(b'name = "\xff"\nuids = [1]\n', source="a.toml")
    assert e.value.key == "(file)"


# --------------------------------------------------------------------------------------
# load_owners
# --------------------------------------------------------------------------------------


def test_load_owners_of_a_missing_dir_is_empty(tmp_path: Path) -> None:
    assert load_owners(str(tmp_path / "nope")) == {}


def test_load_owners_reads_every_toml(tmp_path: Path) -> None:
    d = tmp_path / "owners.d"
    d.mkdir()
    (d / "a.toml").write_text('name = "alpha"\nuids = [1001]\n')
    (d / "b.toml").write_text('name = "beta"\ngids = [1002]\n')
    (d / "README").write_text("not an owner file")
    (d / "c.toml.bak").write_text("garbage = [")
    (d / ".hidden.toml").write_text("garbage = [")
    owners = load_owners(str(d))
    assert sorted(owners) == ["alpha", "beta"]
    assert owners["alpha"].uids == frozenset({1001})
    assert owners["alpha"].source == str(d / "a.toml")
    assert owners["beta"].gids == frozenset({1002})


def test_load_owners_refuses_a_duplicate_name(tmp_path: Path) -> None:
    d = tmp_path / "owners.d"
    d.mkdir()
    (d / "a.toml").write_text('name = "alpha"\nuids = [1001]\n')
    (d / "b.toml").write_text('name = "alpha"\nuids = [1002]\n')
    with pytest.raises(ConfigError) as e:
        load_owners(str(d))
    assert e.value.key == "name"
    assert e.value.path == str(d / "b.toml")
    assert str(d / "a.toml") in e.value.problem


def test_load_owners_a_bad_file_names_it(tmp_path: Path) -> None:
    d = tmp_path / "owners.d"
    d.mkdir()
    (d / "a.toml").write_text('name = "alpha"\n')
    with pytest.raises(ConfigError) as e:
        load_owners(str(d))
    assert e.value.path == str(d / "a.toml")


def test_load_owners_keyring_relative_to_the_dir(tmp_path: Path) -> None:
    d = tmp_path / "owners.d"
    (d / "alpha-keys").mkdir(parents=True)
    (d / "a.toml").write_text('name = "alpha"\nuids = [1]\nkeyring = "alpha-keys"\n')
    assert load_owners(str(d))["alpha"].keyring == str(d / "alpha-keys")


def test_load_owners_refuses_a_huge_file(tmp_path: Path) -> None:
    d = tmp_path / "owners.d"
    d.mkdir()
    (d / "a.toml").write_text('name = "a"\nuids = [1]\n' + "#" * (1 << 16))
    with pytest.raises(ConfigError) as e:
        load_owners(str(d))
    assert "64 KiB" in e.value.problem


# --------------------------------------------------------------------------------------
# Owner.matches: AND across lists, OR within one
# --------------------------------------------------------------------------------------


def peer(
    uid: int = 1001,
    gid: int = 1001,
    *,
    exe: str | None = "/usr/bin/plugin-host",
    unit: str | None = "plugin-host.service",
    groups: frozenset[int] = frozenset({1001, 27}),
) -> Peer:
    return Peer(12345, uid, gid, None, _exe=exe, _unit=unit, _groups=groups, _read=True)


def owner(**lists: frozenset[int] | frozenset[str]) -> Owner:
    return Owner("o", "o.toml", **lists)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("o", "p", "want"),
    [
        (owner(uids=frozenset({1001})), peer(), True),
        (owner(uids=frozenset({1002})), peer(), False),
        (owner(uids=frozenset({1002, 1001})), peer(), True),  # OR within a list
        (owner(gids=frozenset({27})), peer(), True),  # a supplementary group
        (owner(gids=frozenset({1001})), peer(groups=frozenset({1001})), True),
        (owner(gids=frozenset({4})), peer(), False),
        (owner(exes=frozenset({"/usr/bin/plugin-host"})), peer(), True),
        (owner(exes=frozenset({"/usr/bin/other"})), peer(), False),
        (owner(exes=frozenset({"/usr/bin/plugin-host"})), peer(exe=None), False),
        (owner(units=frozenset({"plugin-host.service"})), peer(), True),
        (owner(units=frozenset({"plugin-host.service"})), peer(unit=None), False),
        # AND across lists: every non-empty list must match
        (owner(uids=frozenset({1001}), exes=frozenset({"/usr/bin/plugin-host"})), peer(), True),
        (owner(uids=frozenset({1001}), exes=frozenset({"/usr/bin/other"})), peer(), False),
        (owner(uids=frozenset({0}), exes=frozenset({"/usr/bin/plugin-host"})), peer(), False),
        (
            owner(uids=frozenset({1001}), gids=frozenset({27}), units=frozenset({"x.service"})),
            peer(),
            False,
        ),
        (
            owner(
                uids=frozenset({5, 1001}),
                gids=frozenset({9, 27}),
                units=frozenset({"a.service", "plugin-host.service"}),
                exes=frozenset({"/bin/a", "/usr/bin/plugin-host"}),
            ),
            peer(),
            True,
        ),
        # root is nobody's owner unless listed
        (owner(uids=frozenset({1001})), peer(uid=0, gid=0, groups=frozenset({0})), False),
        (owner(uids=frozenset({0})), peer(uid=0, gid=0), True),
    ],
)
def test_owner_matches(o: Owner, p: Peer, want: bool) -> None:
    assert o.matches(p) is want


def test_groups_fall_back_to_the_gid() -> None:
    p = Peer(1, 1001, 77, None, _read=True)
    assert p.groups() == frozenset({77})
    assert owner(gids=frozenset({77})).matches(p)


# --------------------------------------------------------------------------------------
# unit_of_cgroup
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("0::/system.slice/foo.service\n", "foo.service"),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
            "app-org.gnome.Terminal.slice/vte-spawn-1.scope\n",
            "vte-spawn-1.scope",
        ),
        ("0::/system.slice/docker.service/payload\n", "docker.service"),
        ("0::/system.slice/outer.service/inner.service\n", "inner.service"),
        ("0::/system.slice/cron.timer\n", "cron.timer"),
        ("0::/init.scope\n", "init.scope"),
        ("0::/system.slice\n", None),
        ("0::/\n", None),
        ("", None),
        # cgroup v1 lines are not where systemd's unit is read
        ("12:pids:/system.slice/foo.service\n1:name=systemd:/system.slice/foo.service\n", None),
        ("12:pids:/system.slice/a.service\n0::/system.slice/b.service\n", "b.service"),
    ],
)
def test_unit_of_cgroup(text: str, unit: str | None) -> None:
    assert unit_of_cgroup(text) == unit


# --------------------------------------------------------------------------------------
# identify, owners_for, the pidfd check
# --------------------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def _fdinfo_pid(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise AssertionError(f"fd {fd} is not a pidfd")


def test_identify_is_this_process(pair: tuple[socket.socket, socket.socket]) -> None:
    p = identify(pair[0])
    try:
        assert (p.pid, p.uid, p.gid) == (os.getpid(), os.geteuid(), os.getegid())
        assert p.pidfd is not None
        assert _fdinfo_pid(p.pidfd) == os.getpid()
        assert p.alive() is True
        assert p.exe() == os.readlink("/proc/self/exe")
        assert os.getgid() in p.groups()
        d = p.describe()
        assert (d["pid"], d["uid"], d["exe"]) == (os.getpid(), os.geteuid(), p.exe())
    finally:
        p.close()
    assert p.pidfd is None


def test_owners_for_matches_by_uid(pair: tuple[socket.socket, socket.socket]) -> None:
    p = identify(pair[0])
    try:
        owners = {
            "me": Owner("me", "me.toml", uids=frozenset({os.geteuid()})),
            "other": Owner("other", "o.toml", uids=frozenset({os.geteuid() + 4242})),
            "mygroup": Owner("mygroup", "g.toml", gids=frozenset({os.getegid()})),
        }
        assert owners_for(p, owners) == ["me", "mygroup"]
    finally:
        p.close()


def test_owners_for_without_a_pidfd_is_peer_gone() -> None:
    p = Peer(os.getpid(), os.geteuid(), os.getegid(), None)
    with pytest.raises(PeerGoneError):
        owners_for(p, {"me": Owner("me", "me.toml", uids=frozenset({os.geteuid()}))})
    assert p.alive() is False


def test_a_peer_that_exited_is_gone() -> None:
    child = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(child.pid)
    child.wait(timeout=30)
    p = Peer(child.pid, os.geteuid(), os.getegid(), pidfd)
    try:
        assert p.alive() is False
        with pytest.raises(PeerGoneError):
            p.exe()
        with pytest.raises(PeerGoneError):
            owners_for(p, {"x": Owner("x", "x.toml", exes=frozenset({"/bin/true"}))})
        assert p.describe()["exe"] is None
    finally:
        p.close()
