"""Keylime runtime policies (format version 1): read, write, refuse (keylime/ima/ima.py).

Keylime's own schema check of what imaguard writes runs in test_keylime_interop.py.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

import imaguard
from imaguard.formats.keylime import RuntimePolicy

H1 = "a" * 40
H256 = "0123456789abcdef" * 4
H512 = "f" * 128


def minimal() -> dict[str, Any]:
    """A minimal policy Keylime's RUNTIME_POLICY_SCHEMA accepts."""
    return {
        "meta": {"version": 1, "generator": 0},
        "release": 0,
        "digests": {"boot_aggregate": [H256], "/usr/bin/env": [H256, H1]},
        "excludes": [],
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }


def parse(doc: dict[str, Any]) -> RuntimePolicy:
    return RuntimePolicy.parse(json.dumps(doc))


def test_minimal_policy_parses() -> None:
    pol = parse(minimal())
    assert pol.digests == {"boot_aggregate": (H256,), "/usr/bin/env": (H256, H1)}
    assert pol.excludes == ()
    assert pol.log_hash_alg == "sha1"
    assert pol.verification_keys == ""
    assert pol.public_keys() == []


def test_full_policy_round_trip() -> None:
    doc = minimal()
    doc["meta"]["timestamp"] = "2024-01-01T00:00:00"
    doc["meta"]["generator"] = 3
    doc["release"] = 7
    doc["excludes"] = ["/var/log/.*", "boot_aggregate", r"/tmp/[^/]+\.tmp"]
    doc["keyrings"] = {".ima": [H256], ".builtin_trusted_keys": [H512]}
    doc["ima"]["ignored_keyrings"] = ["*"]
    doc["ima"]["log_hash_alg"] = "sha256"
    doc["ima-buf"] = {"kernel_version": [H256]}
    doc["verification-keys"] = json.dumps({"meta": {"version": 1}, "keyids": [], "pubkeys": []})
    pol = parse(doc)
    text = pol.serialize()
    assert RuntimePolicy.parse(text) == pol
    out = json.loads(text)
    assert out["meta"] == doc["meta"]
    assert out["release"] == 7
    assert out["keyrings"] == doc["keyrings"]
    assert out["ima"] == doc["ima"]
    assert out["ima-buf"] == doc["ima-buf"]
    assert out["excludes"] == doc["excludes"]
    assert out["verification-keys"] == doc["verification-keys"]
    assert isinstance(out["verification-keys"], str)


def test_serialized_policy_has_every_required_key_and_null_dm_policy() -> None:
    out = json.loads(RuntimePolicy().serialize())
    assert set(out) == {
        "meta",
        "release",
        "digests",
        "excludes",
        "keyrings",
        "ima",
        "ima-buf",
        "verification-keys",
    }
    assert out["meta"]["version"] == 1
    assert out["ima"]["dm_policy"] is None
    assert set(out["ima"]) == {"ignored_keyrings", "log_hash_alg", "dm_policy"}
    assert out["verification-keys"] == ""


_hex = st.integers(20, 64).flatmap(
    lambda n: st.binary(min_size=n, max_size=n).map(lambda b: b.hex())
)
_paths = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=40
)
_regex = st.sampled_from(["/var/log/", r".*\.pyc", "boot_aggregate", r"/tmp/[a-z]+/", "^/proc"])


@settings(max_examples=100, deadline=None)
@given(
    digests=st.dictionaries(_paths, st.lists(_hex, min_size=1, max_size=3), max_size=6),
    keyrings=st.dictionaries(_paths, st.lists(_hex, max_size=2), max_size=2),
    ima_buf=st.dictionaries(_paths, st.lists(_hex, max_size=2), max_size=2),
    excludes=st.lists(_regex, max_size=3),
    ignored=st.lists(_paths, max_size=2),
    alg=st.sampled_from(["sha1", "sha256", "sha384", "sha512"]),
    release=st.integers(0, 1000),
    generator=st.integers(0, 3),
)
def test_round_trip_property(
    digests: dict[str, list[str]],
    keyrings: dict[str, list[str]],
    ima_buf: dict[str, list[str]],
    excludes: list[str],
    ignored: list[str],
    alg: str,
    release: int,
    generator: int,
) -> None:
    pol = RuntimePolicy(
        digests={k: tuple(v) for k, v in digests.items()},
        keyrings={k: tuple(v) for k, v in keyrings.items()},
        ima_buf={k: tuple(v) for k, v in ima_buf.items()},
        excludes=tuple(excludes),
        ignored_keyrings=tuple(ignored),
        log_hash_alg=alg,
        release=release,
        generator=generator,
    )
    again = RuntimePolicy.parse(pol.serialize())
    assert again == pol
    assert again.serialize() == pol.serialize()


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["meta", "release", "digests", "excludes", "keyrings", "ima", "ima-buf", "verification-keys"],
)
def test_every_required_key_is_required(key: str) -> None:
    doc = minimal()
    del doc[key]
    with pytest.raises(imaguard.FormatError, match=key):
        parse(doc)


@pytest.mark.parametrize(
    "bad",
    [
        "A" * 40,  # uppercase
        "a" * 39,  # too short
        "a" * 129,  # too long
        "g" * 40,  # not hex
        " " + "a" * 40,
        "a" * 40 + "\n",
        42,
        None,
    ],
)
@pytest.mark.parametrize("table", ["digests", "keyrings", "ima-buf"])
def test_bad_hex_is_refused_naming_the_entry(bad: object, table: str) -> None:
    doc = minimal()
    doc[table] = {"/usr/bin/bad entry": [H256, bad]}
    with pytest.raises(imaguard.FormatError) as exc:
        parse(doc)
    assert table in str(exc.value)
    assert "/usr/bin/bad entry" in str(exc.value)


@pytest.mark.parametrize("table", ["digests", "keyrings", "ima-buf"])
def test_digest_tables_must_map_to_lists(table: str) -> None:
    doc = minimal()
    doc[table] = {"/x": H256}
    with pytest.raises(imaguard.FormatError, match=table):
        parse(doc)
    doc[table] = [H256]
    with pytest.raises(imaguard.FormatError, match=table):
        parse(doc)


@pytest.mark.parametrize("regex", ["/var/log/(", "[unclosed", "*start", "(?P<x>a)(?P<x>b)"])
def test_bad_regex_is_refused_with_a_message_naming_it(regex: str) -> None:
    """Keylime would silently drop the whole exclude list (keylime/ima/ima.py); imaguard refuses."""
    doc = minimal()
    doc["excludes"] = ["/ok/", regex]
    with pytest.raises(imaguard.FormatError) as exc:
        parse(doc)
    assert regex in str(exc.value)
    with pytest.raises(imaguard.FormatError):
        RuntimePolicy(excludes=(regex,))


@pytest.mark.parametrize("value", [{}, "dm", 0, [], {"rules": []}])
def test_dm_policy_must_be_null(value: object) -> None:
    doc = minimal()
    doc["ima"]["dm_policy"] = value
    with pytest.raises(imaguard.FormatError, match="dm_policy"):
        parse(doc)


@pytest.mark.parametrize(
    "value", [{"meta": {"version": 1}, "keyids": [], "pubkeys": []}, [], 1, None]
)
def test_verification_keys_must_be_a_string(value: object) -> None:
    doc = minimal()
    doc["verification-keys"] = value
    with pytest.raises(imaguard.FormatError, match="verification-keys"):
        parse(doc)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["meta"].update(version=2), "meta.version"),
        (lambda d: d.update(meta=[]), "meta"),
        (lambda d: d["meta"].update(generator=4), "generator"),
        (lambda d: d["ima"].update(log_hash_alg="md5"), "log_hash_alg"),
        (lambda d: d.update(ima=None), "ima"),
        (lambda d: d.update(excludes="/var/log/"), "excludes"),
        (lambda d: d.update(excludes=[1]), "excludes"),
        (lambda d: d.update(release="x"), "release"),
        (lambda d: d["ima"].update(ignored_keyrings="*"), "ignored_keyrings"),
    ],
)
def test_other_malformed_policies_are_refused(mutate: Any, needle: str) -> None:
    doc = copy.deepcopy(minimal())
    mutate(doc)
    with pytest.raises(imaguard.FormatError, match=needle):
        parse(doc)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"policy"', "\xff"])
def test_non_policies_are_format_errors(text: str) -> None:
    with pytest.raises(imaguard.FormatError):
        RuntimePolicy.parse(text)


# -- verification-keys ------------------------------------------------------------------


def test_verification_keys_string_holds_an_ima_keyring(rsa_ring: imaguard.Keyring) -> None:
    cert = rsa_ring.certificates[0]
    spki = cert.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = RuntimePolicy.keyring_string([spki], [0x1234])
    ring = json.loads(text)
    assert ring == {
        "meta": {"version": 1},
        "keyids": [0x1234],
        "pubkeys": [base64.b64encode(spki).decode()],
    }
    doc = minimal()
    doc["verification-keys"] = text
    pol = parse(doc)
    assert pol.public_keys() == [(0x1234, spki)]
    assert RuntimePolicy.parse(pol.serialize()).public_keys() == [(0x1234, spki)]
    # keyids may be shorter than pubkeys: the missing id is computed later (None here).
    pol2 = RuntimePolicy(verification_keys=RuntimePolicy.keyring_string([spki, spki], [7]))
    assert pol2.public_keys() == [(7, spki), (None, spki)]


@pytest.mark.parametrize("text", ["not json", "[]", '{"pubkeys": ["!!notbase64"]}', "42"])
def test_a_malformed_verification_keys_string_is_a_format_error(text: str) -> None:
    pol = RuntimePolicy(verification_keys=text)
    with pytest.raises(imaguard.FormatError, match="verification-keys"):
        pol.public_keys()


def test_exclude_regex_follows_keylime_re_match() -> None:
    pol = RuntimePolicy(excludes=("/var/log/", "local"))
    rx = pol.exclude_regex
    assert rx is not None
    assert rx.match("/var/log/syslog")
    assert not rx.match("/usr/local/bin/x")  # anchored at the start
    assert rx.match("localfile")
    assert RuntimePolicy().exclude_regex is None
