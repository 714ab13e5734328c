"""Owners and peers: who may act for which owner's policies (README, "Several owners, one
machine"; docs/protocol.md).

An owner file (``owners.d/NAME.toml``) names an owner and the peers that may act for it::

    name = "plugins"
    uids = [1001]
    gids = []
    units = ["plugin-host.service"]
    exes = ["/usr/bin/plugin-host"]
    keyring = "/etc/imaguard/owners/plugins/keys"

A peer acts for the owner when it matches **every list that is not empty**, and one entry
of each: with ``uids = [1001]`` and ``exes = ["/usr/bin/plugin-host"]`` only that program
run as uid 1001 qualifies. A file whose lists are all empty is an error (an owner nobody,
or everybody, could act for is a mistake either way). Root is nobody's owner unless a file
lists uid 0 (or its gid, unit or exe).

The peer is identified by the kernel (``SO_PEERCRED``, ``SO_PEERPIDFD``); what is read
through ``/proc/PID`` is kept only if the pidfd shows the same process still alive
afterwards (the pid was not reused meanwhile).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import tomllib
from dataclasses import dataclass, field
from typing import Any

from imaguard.errors import BackendError
from imaguard.service._config import ConfigError

__all__ = ["Owner", "Peer", "PeerGoneError", "identify", "load_owners", "owners_for", "parse_owner"]

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5; 77 on every architecture
_OWNER_KEYS = {"name", "uids", "gids", "units", "exes", "keyring", "digestlists"}
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".timer", ".mount", ".slice")


class PeerGoneError(BackendError):
    """The peer's process exited before it could be identified safely."""


@dataclass(frozen=True)
class Owner:
    """One owner file: the peers that may act for ``name``, and its policy keyring."""

    name: str
    source: str
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    units: frozenset[str] = frozenset()
    exes: frozenset[str] = frozenset()
    keyring: str | None = None
    digestlists: bool = False
    """May add digest lists to the daemon's trust database and remove them."""

    def matches(self, peer: Peer) -> bool:
        """True when ``peer`` satisfies every non-empty list of this owner."""
        if self.uids and peer.uid not in self.uids:
            return False
        if self.gids and not (self.gids & peer.groups()):
            return False
        if self.units and peer.unit() not in self.units:
            return False
        return not (self.exes and peer.exe() not in self.exes)


def parse_owner(text: str | bytes, *, source: str, base: str | None = None) -> Owner:
    """One owner file; every problem is a ConfigError naming the file and the key."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(source, "(file)", f"not UTF-8 text (byte {e.start})") from e
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "(syntax)", f"not valid TOML: {e}") from e
    except RecursionError:
        raise ConfigError(source, "(syntax)", "not valid TOML: nested too deeply") from None
    unknown = sorted(set(doc) - _OWNER_KEYS)
    if unknown:
        raise ConfigError(
            source, unknown[0], f"unknown key (known keys: {', '.join(sorted(_OWNER_KEYS))})"
        )
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(source, "name", "missing: the owner's name (a string)")
    if any(c.isspace() for c in name) or "=" in name or "/" in name:
        raise ConfigError(source, "name", f"bad owner name {name!r} (no spaces, '=' or '/')")

    def ints(key: str) -> frozenset[int]:
        v = doc.get(key, [])
        if not isinstance(v, list) or not all(type(x) is int and x >= 0 for x in v):
            raise ConfigError(source, key, "must be a list of non-negative integers")
        return frozenset(v)

    def strs(key: str) -> frozenset[str]:
        v = doc.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ConfigError(source, key, "must be a list of non-empty strings")
        return frozenset(v)

    exes = strs("exes")
    for exe in exes:
        if not exe.startswith("/"):
            raise ConfigError(source, "exes", f"must be absolute paths, not {exe!r}")
    owner = Owner(name, source, ints("uids"), ints("gids"), strs("units"), exes)
    if not (owner.uids or owner.gids or owner.units or owner.exes):
        raise ConfigError(
            source, "uids", "give at least one of uids, gids, units or exes (who acts for it)"
        )
    digestlists = doc.get("digestlists", False)
    if not isinstance(digestlists, bool):
        raise ConfigError(source, "digestlists", "must be true or false")
    if digestlists:
        owner = Owner(name, source, owner.uids, owner.gids, owner.units, exes, None, True)
    keyring = doc.get("keyring")
    if keyring is not None:
        if not isinstance(keyring, str) or not keyring:
            raise ConfigError(source, "keyring", "must be a path (a string)")
        if base is not None and not os.path.isabs(keyring):
            keyring = os.path.join(base, keyring)
        if not os.path.exists(keyring):
            raise ConfigError(source, "keyring", f"{keyring} does not exist")
        return Owner(name, source, owner.uids, owner.gids, owner.units, exes, keyring, digestlists)
    return owner


def load_owners(directory: str) -> dict[str, Owner]:
    """Every ``*.toml`` in ``directory`` (none when it does not exist), keyed by owner name."""
    if not os.path.isdir(directory):
        return {}
    out: dict[str, Owner] = {}
    for entry in sorted(os.listdir(directory)):
        if not entry.endswith(".toml") or entry.startswith("."):
            continue
        path = os.path.join(directory, entry)
        try:
            with open(path, "rb") as f:
                data = f.read((1 << 16) + 1)
        except OSError as e:
            raise ConfigError(path, "(file)", f"cannot read: {e.strerror or e}") from e
        if len(data) > 1 << 16:
            raise ConfigError(path, "(file)", "larger than 64 KiB")
        owner = parse_owner(data, source=path, base=directory)
        if owner.name in out:
            raise ConfigError(
                path, "name", f"owner {owner.name!r} is already defined in {out[owner.name].source}"
            )
        out[owner.name] = owner
    return out


@dataclass
class Peer:
    """The process at the other end of a control connection, as the kernel names it."""

    pid: int
    uid: int
    gid: int
    pidfd: int | None = None
    _exe: str | None = field(default=None, repr=False)
    _unit: str | None = field(default=None, repr=False)
    _groups: frozenset[int] | None = field(default=None, repr=False)
    _read: bool = field(default=False, repr=False)

    def _load(self) -> None:
        if self._read:
            return
        exe: str | None = None
        unit: str | None = None
        groups = {self.gid}
        with contextlib.suppress(OSError):
            exe = os.readlink(f"/proc/{self.pid}/exe")
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/cgroup") as f:
            unit = unit_of_cgroup(f.read())
        if not self.alive():
            raise PeerGoneError(f"pid {self.pid} exited before it could be identified")
        self._exe, self._unit, self._groups = exe, unit, frozenset(groups)
        self._read = True

    def alive(self) -> bool:
        """True while the process that connected is still running (its pidfd not readable)."""
        if self.pidfd is None:
            return False
        p = select.poll()
        p.register(self.pidfd, select.POLLIN)
        return not p.poll(0)

    def exe(self) -> str | None:
        self._load()
        return self._exe

    def unit(self) -> str | None:
        self._load()
        return self._unit

    def groups(self) -> frozenset[int]:
        self._load()
        return self._groups or frozenset({self.gid})

    def describe(self) -> dict[str, Any]:
        """pid, uid, gid, exe and unit, for answers and audit records (never raises)."""
        d: dict[str, Any] = {"pid": self.pid, "uid": self.uid, "gid": self.gid}
        try:
            d["exe"], d["unit"] = self.exe(), self.unit()
        except PeerGoneError:
            d["exe"] = d["unit"] = None
        return d

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


def unit_of_cgroup(text: str) -> str | None:
    """The systemd unit of a ``/proc/PID/cgroup`` text: the deepest unit-named component."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[0] != "0":
            continue
        for component in reversed(parts[2].split("/")):
            if component.endswith(_UNIT_SUFFIXES) and not component.endswith(".slice"):
                return component
    return None


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def identify(conn: socket.socket) -> Peer:
    """The peer of ``conn``: SO_PEERCRED, and a pidfd for the very process that connected."""
    pid, uid, gid = peer_credentials(conn)
    pidfd: int | None = None
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        # Before Linux 6.5: open one now, and accept it only if that process still has the
        # uid the socket recorded (a reused pid of another user is refused).
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(pid)
            if os.stat(f"/proc/{pid}").st_uid != uid:
                os.close(pidfd)
                pidfd = None
    return Peer(pid, uid, gid, pidfd)


def owners_for(peer: Peer, owners: dict[str, Owner]) -> list[str]:
    """The names of the owners ``peer`` may act for (PeerGoneError if it cannot be told)."""
    if peer.pidfd is None:
        raise PeerGoneError(f"pid {peer.pid} cannot be identified safely (no pidfd)")
    return sorted(name for name, o in owners.items() if o.matches(peer))
