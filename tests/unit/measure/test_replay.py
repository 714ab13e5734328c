"""The one replay core (imaguard.measure._replay.Replay), checked against PCR values
computed here by hand, and shared by the log store and log verification."""

from __future__ import annotations

import hashlib
from pathlib import Path

from imaguard.formats.measurelist import iter_binary, serialize_binary
from imaguard.formats.template import TemplateDescriptor
from imaguard.measure import (
    LogStore,
    _logstore,
    _replay,
    _verify,
    buffer_entry,
    records_from_binary,
    verify_records,
)

NG = TemplateDescriptor.lookup("ima-ng")


def _by_hand(data: bytes, bank: str) -> dict[int, bytes]:
    """Independent oracle: PCR_i = H(PCR_i || H(template data)), 0xFF.. for violations."""
    size = hashlib.new(bank).digest_size
    pcrs: dict[int, bytes] = {}
    for rec in iter_binary(data):
        value = (
            b"\xff" * size if not any(rec.digest) else hashlib.new(bank, rec.template_data).digest()
        )
        pcrs[rec.pcr] = hashlib.new(bank, pcrs.get(rec.pcr, b"\0" * size) + value).digest()
    return pcrs


def _log() -> bytes:
    from imaguard.measure import violation_entry

    entries = [
        buffer_entry("boot_aggregate", b"", NG),
        buffer_entry("a", b"1", NG, pcr=10),
        violation_entry("/x", NG),
        buffer_entry("b", b"2", NG, pcr=11),
    ]
    return serialize_binary(entries)


def test_replay_equals_the_hand_computed_pcrs() -> None:
    data = _log()
    replay = _replay.Replay(("sha1", "sha256", "sha384"))
    assert all(replay.step(r) for r in iter_binary(data))
    for bank in ("sha1", "sha256", "sha384"):
        hand = _by_hand(data, bank)
        assert {i: replay.pcrs[bank][i] for i in hand} == hand
    assert replay.used() == [10, 11]


def test_replay_flags_an_altered_record_and_tracks_the_last_match() -> None:
    data = _log()
    recs = list(iter_binary(data))
    after_two = _replay.Replay(("sha256",))
    for r in recs[:2]:
        after_two.step(r)
    expected = {"sha256": {10: after_two.pcrs["sha256"][10]}}
    replay = _replay.Replay(("sha256",), expected=expected)
    assert replay.matched_at is None
    for r in recs:
        replay.step(r)
    assert replay.matched_at == 2  # PCR 10 matched after 2 records, then the violation moved it
    assert not replay.matches  # type: ignore[unreachable]
    bad = recs[1]._replace(template_data=recs[1].template_data + b"x")
    assert _replay.Replay(("sha256",)).step(bad) is False


def test_store_and_verifier_share_the_replay_and_agree(tmp_path: Path) -> None:
    assert _logstore.Replay is _replay.Replay  # type: ignore[attr-defined]
    assert _verify.Replay is _replay.Replay  # type: ignore[attr-defined]
    with LogStore(tmp_path / "s") as store:
        store.append(buffer_entry("k", b"v", NG))
        store.append(buffer_entry("k2", b"v2", NG, pcr=11))
        raw = store.raw()
    with LogStore(tmp_path / "s") as reopened:  # replays on open
        pcrs = reopened.pcrs()
    recs, problem = records_from_binary(raw)
    assert problem is None
    result = verify_records(recs)
    assert result.ok
    assert {b: {i: v.hex() for i, v in p.items()} for b, p in pcrs.items()} == result.pcrs
    assert pcrs["sha256"] == _by_hand(raw, "sha256")
