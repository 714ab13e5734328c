"""STATE/policies.json: the policy service's persisted policies, seals and version marks."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from imaguard.service import ConfigError, PolicyState
from imaguard.service._policies import STATE_FILE


def record(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "origin": "socket",
        "owner": "alpha",
        "lock": "append-only",
        "version": 3,
        "text": "measure func=FILE_CHECK\n",
        "signature": None,
        "loaded_at": 1700000000.5,
        "sealed_boot": None,
        "lock_before_seal": None,
    }
    rec.update(over)
    return rec


def test_no_state_dir_is_an_empty_unsaved_state() -> None:
    st = PolicyState.load(None)
    assert (st.path, st.policies, st.versions) == (None, {}, {})
    st.save()  # nowhere to save: nothing happens


def test_a_missing_file_is_an_empty_state(tmp_path: Path) -> None:
    st = PolicyState.load(str(tmp_path))
    assert st.path == str(tmp_path / STATE_FILE)
    assert (st.policies, st.versions) == ({}, {})
    assert not (tmp_path / STATE_FILE).exists()


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    st = PolicyState.load(str(tmp_path))
    st.policies["mine"] = record()
    st.policies["base"] = record(origin="config", lock="sealed", sealed_boot="b-1", version=2)
    st.mark("mine", 3)
    st.mark("gone", 9)
    st.save()
    path = tmp_path / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == 1
    again = PolicyState.load(str(tmp_path))
    assert again.policies == st.policies
    assert again.versions == {"mine": 3, "gone": 9}


def test_save_replaces_atomically_and_keeps_mode(tmp_path: Path) -> None:
    st = PolicyState.load(str(tmp_path))
    st.mark("a", 1)
    st.save()
    st.mark("a", 2)
    st.save()
    assert PolicyState.load(str(tmp_path)).versions == {"a": 2}
    assert stat.S_IMODE((tmp_path / STATE_FILE).stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]  # no temporary left behind


def test_mark_keeps_the_highest_version() -> None:
    st = PolicyState(None)
    st.mark("a", 5)
    st.mark("a", 3)
    assert st.versions == {"a": 5}
    st.mark("a", 6)
    assert st.versions == {"a": 6}


def test_copy_is_deep() -> None:
    st = PolicyState(None)
    st.policies["a"] = record()
    st.mark("a", 3)
    other = st.copy()
    other.policies["a"]["lock"] = "sealed"
    other.mark("a", 7)
    assert st.policies["a"]["lock"] == "append-only"
    assert st.versions == {"a": 3}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "corrupt policy state"),
        (b"", "corrupt policy state"),
        (b"[]", "not a format-1 policy state"),
        (b'{"format": 2, "policies": {}, "versions": {}}', "not a format-1 policy state"),
        (b'{"format": 1, "versions": {}}', "corrupt policy state"),
        (b'{"format": 1, "policies": [], "versions": {}}', "must be objects"),
        (b'{"format": 1, "policies": {}, "versions": {"a": "3"}}', "versions must be integers"),
        (b'{"format": 1, "policies": {}, "versions": {"a": 1.5}}', "versions must be integers"),
        (b"\xff\xfe", "corrupt policy state"),
    ],
)
def test_a_corrupt_file_is_a_config_error(tmp_path: Path, content: bytes, words: str) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(ConfigError) as e:
        PolicyState.load(str(tmp_path), "/etc/imaguard/imaguard.toml")
    assert e.value.path == "/etc/imaguard/imaguard.toml"
    assert e.value.key == "state"
    assert str(tmp_path / STATE_FILE) in e.value.problem
    assert words in e.value.problem
    assert "nothing was loaded" in e.value.problem


@pytest.mark.parametrize(
    ("rec", "words"),
    [
        ("a string", "malformed record"),
        (record(origin="elsewhere"), "malformed record"),
        ({k: v for k, v in record().items() if k != "origin"}, "malformed record"),
        (record(lock="tight"), "bad lock or version"),
        (record(version="3"), "bad lock or version"),
        (record(version=True), "bad lock or version"),
        (record(text=None), "no text"),
        (record(text=42), "no text"),
    ],
)
def test_a_bad_record_is_a_config_error(tmp_path: Path, rec: Any, words: str) -> None:
    doc = {"format": 1, "policies": {"mine": rec}, "versions": {"mine": 3}}
    (tmp_path / STATE_FILE).write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as e:
        PolicyState.load(str(tmp_path), "cfg.toml")
    assert e.value.key == "state"
    assert "'mine'" in e.value.problem
    assert words in e.value.problem


def test_an_unreadable_state_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError) as e:
        PolicyState.load(str(tmp_path), "cfg.toml")
    assert e.value.key == "state"
    assert "cannot read" in e.value.problem


@pytest.mark.parametrize(
    "rec",
    [record(signature=5), record(loaded_at="yesterday"), record(owner=5)],
    ids=["signature", "loaded_at", "owner"],
)
def test_other_bad_fields_are_a_config_error(tmp_path: Path, rec: dict[str, Any]) -> None:
    doc = {"format": 1, "policies": {"mine": rec}, "versions": {}}
    (tmp_path / STATE_FILE).write_text(json.dumps(doc))
    with pytest.raises(ConfigError):
        PolicyState.load(str(tmp_path), "cfg.toml")
