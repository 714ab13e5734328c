"""SIGHUP reload: a bad config keeps the old Guard in force; a good one is swapped in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from imaguard.service import Service, build_guard, load_config

from .test_status import FakeStats

WriteConfig = Callable[[str], Path]

GOOD = """
watch = ["{tmp}"]
state = "state"
socket = "{tmp}/c.sock"
[[policy]]
name = "exec-guard"
owner = "admin"
rules = "measure func=BPRM_CHECK"
"""


class FakeEnforcer:
    def __init__(self) -> None:
        self.swapped: list[Any] = []
        self.retired: list[Callable[[Any], None] | None] = []

    def swap_guard(self, guard: Any, retired: Callable[[Any], None] | None = None) -> None:
        self.swapped.append(guard)
        self.retired.append(retired)

    def stats(self) -> FakeStats:
        return FakeStats()


def make_service(path: Path, **kw: Any) -> tuple[Service, FakeEnforcer, list[str]]:
    cfg = load_config(path)
    words: list[str] = []
    enforcer = FakeEnforcer()
    service = Service(
        cfg, str(path), build_guard(cfg), enforcer, supervisor_pid=1, notify=words.append, **kw
    )
    service.ready = True
    return service, enforcer, words


def test_bad_reload_keeps_the_old_guard(write_config: WriteConfig) -> None:
    path = write_config(GOOD)
    service, enforcer, words = make_service(path)
    old = service.guard
    path.write_text(path.read_text().replace('owner = "admin"', 'owner = "admin"\nlock = "tight"'))
    assert service.reload() is False
    assert enforcer.swapped == []
    assert service.guard is old
    assert service.last_reload_error is not None
    assert "policy[0].lock" in service.last_reload_error
    assert words[0] == "reloading"
    assert words[1].startswith("reload-failed ")
    assert "policy[0].lock" in words[1]
    status = service.status()
    assert status["ready"] is True
    assert [p["name"] for p in status["policies"]] == ["exec-guard"]
    assert status["last_reload_error"] == service.last_reload_error
    old.close()


def test_unreadable_policy_file_on_reload_keeps_the_old_guard(write_config: WriteConfig) -> None:
    path = write_config(GOOD)
    service, enforcer, _ = make_service(path)
    path.write_text(
        GOOD.replace("{tmp}", str(path.parent)) + '[[policy]]\nname = "x"\nfile = "gone"\n'
    )
    assert service.reload() is False
    assert enforcer.swapped == []
    assert "policy[1].file" in (service.last_reload_error or "")
    service.guard.close()


def test_good_reload_swaps_and_hands_the_log_over(write_config: WriteConfig) -> None:
    path = write_config(GOOD)
    service, enforcer, words = make_service(path)
    old = service.guard
    log = old._log
    assert log is not None
    path.write_text(
        GOOD.replace("{tmp}", str(path.parent))
        + '[[policy]]\nname = "attest"\nowner = "keylime"\nbuiltin = "tcb"\nlock = "sealed"\n'
    )
    assert service.reload() is True
    [new] = enforcer.swapped
    assert service.guard is new
    assert new._log is log
    assert old._log is log  # decisions still under way with the old Guard measure into it
    assert words == ["reloading", "reloaded"]
    [retire] = enforcer.retired
    assert retire is not None
    retire(old)  # the Enforcer: no decision uses the old Guard any more
    assert old._log is None
    # closing the old Guard left the shared log open: the new one still measures into it
    assert new.process("/bin/true", "BPRM_CHECK").actions["measure"].outcome == "passed"
    policies = service.status()["policies"]
    assert policies[1] == {"name": "attest", "owner": "keylime", "lock": "sealed", "version": 1}
    assert service.reloads == 1
    new.close()


def test_permissive_flag_survives_reload(write_config: WriteConfig) -> None:
    path = write_config(GOOD)
    cfg = load_config(path).with_mode("permissive")
    enforcer = FakeEnforcer()
    service = Service(cfg, str(path), build_guard(cfg), enforcer, permissive_flag=True)
    assert service.reload() is True
    assert service.cfg.mode == "permissive"
    assert service.status()["mode"] == "permissive"
    service.guard.close()
