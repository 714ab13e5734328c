"""Decisions by owner (docs/protocol.md, ``decisions``): recorded without blocking, seen only
by the owners whose rules took part, followers with bounded queues that count drops."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from imaguard.policy import Provenance
from imaguard.service._decisions import DecisionHub, Follower


@dataclass(frozen=True)
class FakeAppraise:
    cause: str | None


@dataclass(frozen=True)
class FakeDecision:
    provenance: tuple[Provenance, ...]
    actions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeEvent:
    """The fields of an ``EventDecision`` that the hub reads."""

    path: str
    decision: FakeDecision | None
    pid: int = 4242
    hook: str = "BPRM_CHECK"
    mask: int = 0x1
    allowed: bool = True
    permissive_override: bool = False
    reason: str = "appraised"
    exe: str | None = "/usr/bin/plugin-host"


def prov(policy: str, owner: str | None = None, action: str = "appraise") -> Provenance:
    return Provenance(action, policy, 1, f"{action} func=BPRM_CHECK", owner)


def event(path: str, *provs: Provenance, cause: str | None = None, **kw: Any) -> FakeEvent:
    actions = {"appraise": FakeAppraise(cause)} if cause is not None else {}
    return FakeEvent(path, FakeDecision(tuple(provs), actions), **kw)


OWNER_OF: dict[str, str | None] = {"plugins-p": "plugins", "ops-p": "ops", "anon": None}


def test_a_record_has_every_field() -> None:
    hub = DecisionHub()
    hub.record(
        event(
            "/opt/x",
            prov("plugins-p", "plugins"),
            prov("ops-p", action="measure"),
            cause="invalid-signature",
            allowed=False,
            permissive_override=True,
            reason="denied: appraisal failed",
        ),
        OWNER_OF,
    )
    [r] = hub.recent(["plugins"])
    assert r["seq"] == 1
    assert isinstance(r["time"], float)
    assert {k: r[k] for k in ("path", "hook", "mask", "pid", "exe")} == {
        "path": "/opt/x",
        "hook": "BPRM_CHECK",
        "mask": 1,
        "pid": 4242,
        "exe": "/usr/bin/plugin-host",
    }
    assert (r["allowed"], r["permissive"], r["reason"], r["cause"]) == (
        False,
        True,
        "denied: appraisal failed",
        "invalid-signature",
    )
    assert r["owners"] == ["ops", "plugins"]
    assert r["provenance"] == [
        {
            "action": "appraise",
            "policy": "plugins-p",
            "line": 1,
            "rule": "appraise func=BPRM_CHECK",
            "owner": "plugins",
        },
        {
            "action": "measure",
            "policy": "ops-p",
            "line": 1,
            "rule": "measure func=BPRM_CHECK",
            "owner": "ops",  # from owner_of: the provenance carried none
        },
    ]


def test_recent_filters_by_owner() -> None:
    hub = DecisionHub()
    hub.record(event("/a", prov("plugins-p", "plugins")), OWNER_OF)
    hub.record(event("/b", prov("ops-p")), OWNER_OF)
    hub.record(event("/c", prov("plugins-p", "plugins"), prov("ops-p", "ops")), OWNER_OF)
    assert [r["path"] for r in hub.recent(["plugins"])] == ["/a", "/c"]
    assert [r["path"] for r in hub.recent(["ops"])] == ["/b", "/c"]
    assert [r["path"] for r in hub.recent(["ops", "plugins"])] == ["/a", "/b", "/c"]
    assert hub.recent(["nobody"]) == []
    assert hub.recent([]) == []
    assert [r["seq"] for r in hub.recent(["ops", "plugins"])] == [1, 2, 3]


def test_a_decision_with_no_owner_is_not_recorded() -> None:
    hub = DecisionHub()
    hub.record(event("/a", prov("anon")), OWNER_OF)
    hub.record(event("/b", prov("unknown-policy")), OWNER_OF)
    hub.record(event("/c"), OWNER_OF)  # no provenance at all
    hub.record(FakeEvent("/d", None), OWNER_OF)  # no decision (an error answer)
    assert hub.recent(["plugins", "ops"]) == []
    hub.record(event("/e", prov("anon"), prov("plugins-p")), OWNER_OF)
    [r] = hub.recent(["plugins"])
    assert (r["path"], r["seq"], r["owners"]) == ("/e", 1, ["plugins"])


def test_the_recent_ring_is_bounded() -> None:
    hub = DecisionHub(recent=3)
    for i in range(5):
        hub.record(event(f"/{i}", prov("plugins-p")), OWNER_OF)
    assert [r["path"] for r in hub.recent(["plugins"])] == ["/2", "/3", "/4"]
    assert hub.dropped_recent == 2


def test_a_follower_gets_its_owners_decisions() -> None:
    hub = DecisionHub()
    f = hub.follow(["plugins"])
    hub.record(event("/a", prov("plugins-p")), OWNER_OF)
    hub.record(event("/b", prov("ops-p")), OWNER_OF)
    hub.record(event("/c", prov("ops-p"), prov("plugins-p")), OWNER_OF)
    assert [r["path"] for r in f.take(0.1)] == ["/a", "/c"]
    assert f.take(0.01) == []
    assert f.dropped == 0


def test_follower_overflow_drops_the_oldest_and_counts() -> None:
    f = Follower(frozenset({"plugins"}), maxlen=3)
    for i in range(7):
        f.push({"seq": i})
    assert f.dropped == 4
    assert [r["seq"] for r in f.take(0.1)] == [4, 5, 6]
    f.push({"seq": 7})
    assert [r["seq"] for r in f.take(0.1)] == [7]
    assert f.dropped == 4


def test_a_slow_follower_never_blocks_recording() -> None:
    hub = DecisionHub()
    f = hub.follow(["plugins"])
    f.queue = type(f.queue)(maxlen=2)  # a tiny buffer
    for i in range(10):
        hub.record(event(f"/{i}", prov("plugins-p")), OWNER_OF)
    assert f.dropped == 8
    assert [r["path"] for r in f.take(0.1)] == ["/8", "/9"]
    assert len(hub.recent(["plugins"])) == 10


def test_take_waits_for_a_decision() -> None:
    hub = DecisionHub()
    f = hub.follow(["ops"])
    timer = threading.Timer(0.05, hub.record, args=(event("/late", prov("ops-p")), OWNER_OF))
    timer.start()
    try:
        got = f.take(5)
    finally:
        timer.join()
    assert [r["path"] for r in got] == ["/late"]


def test_unfollow_stops_delivery() -> None:
    hub = DecisionHub()
    f = hub.follow(["plugins"])
    other = hub.follow(["plugins"])
    hub.record(event("/a", prov("plugins-p")), OWNER_OF)
    hub.unfollow(f)
    hub.record(event("/b", prov("plugins-p")), OWNER_OF)
    assert [r["path"] for r in f.take(0.01)] == ["/a"]
    assert f.take(0.01) == []
    assert [r["path"] for r in other.take(0.01)] == ["/a", "/b"]
    hub.unfollow(f)  # twice is harmless


@pytest.mark.parametrize("n_threads", [4])
def test_recording_from_many_threads(n_threads: int) -> None:
    hub = DecisionHub()
    f = hub.follow(["plugins"])

    def work(k: int) -> None:
        for i in range(100):
            hub.record(event(f"/{k}/{i}", prov("plugins-p")), OWNER_OF)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recent = hub.recent(["plugins"])
    assert len(recent) == 100 * n_threads
    assert sorted(r["seq"] for r in recent) == list(range(1, 100 * n_threads + 1))
    assert len(f.take(0.1)) == 100 * n_threads
