"""The fuzz targets: one check function per parser that reads outside input.

Each check takes the fuzzer's bytes, hands them to one parser and enforces its contract:

* the parser either returns a value or raises an :class:`imaguard.Error` subclass; any other
  exception (``IndexError``, ``RecursionError``, ``OverflowError``, ...) propagates and the
  fuzzer reports it as a crash;
* what parses serializes back: byte for byte where the format promises it (``security.ima``
  values, binary measurement lists, digest lists), else ``parse(serialize(x)) == x``
  (policy text, ASCII lists, Keylime runtime policies, control frames). A broken promise
  raises :class:`ContractError`.

The checks are plain functions, so ``tests/unit/test_fuzz_harnesses.py`` replays the seeds
and regressions through them in-process; ``fuzz.run`` wraps one in atheris.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaguard.errors import Error
from imaguard.formats import digestlist, measurelist, xattr
from imaguard.formats.keylime import RuntimePolicy
from imaguard.measure import _parallel
from imaguard.policy import CompiledPolicy, Mode, parse_policy, parse_rule
from imaguard.service._config import parse_config
from imaguard.service._owners import parse_owner
from imaguard.service._protocol import ProtocolError
from imaguard.service._protocol import parse as parse_frame
from imaguard.service._protocol import serialize as serialize_frame

__all__ = ["FUZZ_DIR", "TARGETS", "ContractError", "Target", "inputs"]

FUZZ_DIR = Path(__file__).resolve().parent
BANKS = ("sha1", "sha256")
"""The PCR banks every measurement-list input is read for (the digest column's size)."""


class ContractError(AssertionError):
    """A parser accepted its input but broke a promise (round trip, agreement, ...)."""


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ContractError(what)


# -- security.ima / security.evm values ---------------------------------------------------


def check_xattr(data: bytes) -> bool:
    """``xattr.parse``: strict, so a value that parses serializes to the same bytes."""
    signature = xattr.is_signature(data)  # judged by the type byte alone; never raises
    _require(signature == (bool(data) and data[0] in (0x03, 0x06)), "is_signature")
    try:
        value = xattr.parse(data)
    except Error:
        return False
    _require(value.serialize() == data, "security.ima value: parse -> serialize changed bytes")
    _require(type(value).parse(data) == value, "the type's own parse disagrees with parse()")
    return True


# -- policy text -----------------------------------------------------------------------------


def _check_policy(data: bytes, mode: Mode) -> bool:
    try:
        policy = parse_policy(data, mode=mode)
    except Error:
        return False
    text = policy.text()
    again = parse_policy(text, mode=mode)
    _require(again.rules == policy.rules, f"{mode} policy: parse(text()) differs")
    _require(again.text() == text, f"{mode} policy: the read-back text is not stable")
    for rule in policy.rules:
        _require(parse_rule(rule.read_back(), mode=mode) == rule, "parse_rule(read_back())")
    CompiledPolicy(policy.rules)  # generated code from parsed values must compile
    if mode == "kernel":
        # imaguard mode only adds: whatever the kernel takes it takes unchanged.
        wide = parse_policy(data, mode="imaguard")
        _require(wide.rules == policy.rules, "imaguard mode reads a kernel policy differently")
    return True


def check_policy_kernel(data: bytes) -> bool:
    """``parse_policy(mode="kernel")``: canonical text re-parses to the same rules."""
    return _check_policy(data, "kernel")


def check_policy_imaguard(data: bytes) -> bool:
    """``parse_policy(mode="imaguard")``: canonical text re-parses to the same rules."""
    return _check_policy(data, "imaguard")


# -- measurement lists ---------------------------------------------------------------------


def check_measurelist_binary(data: bytes) -> bool:
    """``parse_binary`` for sha1 and sha256: records serialize back to the same bytes, and
    the fast reader ``iter_binary`` yields the same template data. True when a bank parses."""
    accepted = False
    for bank in BANKS:
        try:
            records = measurelist.parse_binary(data, bank)
        except Error:
            continue
        accepted = True
        raw = list(measurelist.iter_binary(data, bank))
        _require(len(raw) == len(records), f"{bank}: iter_binary counts differently")
        for r, rec in zip(raw, records, strict=True):
            _require(
                (r.pcr, r.digest, r.template_name, r.template_data)
                == (rec.entry.pcr, rec.digest, rec.entry.template.name, rec.entry.template_data()),
                f"{bank}: record {r.index}: iter_binary and parse_binary disagree",
            )
        out = b"".join(measurelist.serialize_record(rec.entry, rec.digest) for rec in records)
        _require(out == data, f"{bank}: binary list: parse -> serialize changed bytes")
    return accepted


def check_measurelist_ascii(data: bytes) -> bool:
    """``parse_ascii`` for sha1 and sha256: the serialized entries parse back the same,
    and where the fast reader ``iter_ascii`` accepts the text too, it agrees. True when a
    bank parses."""
    accepted = False
    for bank in BANKS:
        try:
            records = measurelist.parse_ascii(data, bank)
        except Error:
            records = None
        try:
            raw = list(measurelist.iter_ascii(data, bank))
        except Error:
            raw = None
        if records is None:
            continue
        accepted = True
        if raw is not None:
            _require(len(raw) == len(records), f"{bank}: iter_ascii counts differently")
            for r, rec in zip(raw, records, strict=True):
                _require(
                    (r.pcr, r.digest, r.template_name, r.template_data)
                    == (
                        rec.entry.pcr,
                        rec.digest,
                        rec.entry.template.name,
                        rec.entry.template_data(),
                    ),
                    f"{bank}: record {r.index}: iter_ascii and parse_ascii disagree",
                )
        entries = [rec.entry for rec in records]
        again = measurelist.parse_ascii(measurelist.serialize_ascii(entries, bank), bank)
        _require([rec.entry for rec in again] == entries, f"{bank}: ASCII round trip")
    _scans_agree(data)
    return accepted


def _scans_agree(data: bytes) -> None:
    """The C scan of log verification (imaguard._native, where built) and the Python scan
    read any text alike: the same records, digests, failures, violations and error."""
    if _parallel._native() is None:
        return
    for bank in BANKS:
        fast = _parallel.scan_ascii(data, 0, len(data), 1, bank, BANKS)
        slow = _parallel._scan_ascii_py(data, 0, len(data), 1, bank, BANKS)
        _require(
            (fast.count, bytes(fast.pcrs), [bytes(v) for v in fast.values])
            == (slow.count, bytes(slow.pcrs), [bytes(v) for v in slow.values])
            and (fast.failures, fast.violations, fast.error)
            == (slow.failures, slow.violations, slow.error),
            f"{bank}: the C and Python scans of the list disagree",
        )


# -- Keylime runtime policies ----------------------------------------------------------------


def check_keylime(data: bytes) -> bool:
    """``RuntimePolicy.parse``: serialize -> parse gives the same policy, and its keyring
    string and exclude regex are usable."""
    try:
        policy = RuntimePolicy.parse(data)
    except Error:
        return False
    text = policy.serialize()
    again = RuntimePolicy.parse(text)
    _require(again == policy, "runtime policy: parse(serialize()) differs")
    _require(again.serialize() == text, "runtime policy: serialize() is not stable")
    _ = policy.exclude_regex
    with contextlib.suppress(Error):
        policy.public_keys()
    return True


# -- digest lists ------------------------------------------------------------------------------


def check_digestlist(data: bytes) -> bool:
    """``digestlist.parse``: a list that parses serializes to the same bytes (its appended
    signature included)."""
    try:
        dl = digestlist.parse(data)
    except Error:
        return False
    out = digestlist.serialize(dl)
    if dl.signature is not None:
        out = digestlist.append_signature(out, dl.signature)
    _require(out == data, "digest list: parse -> serialize changed bytes")
    return True


# -- the control protocol ------------------------------------------------------------------------


def _same_json(a: Any, b: Any) -> bool:
    """Equality of decoded JSON where NaN equals NaN (it is the same value on the wire)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def check_protocol(data: bytes) -> bool:
    """``_protocol.parse`` of one whole frame: the object serializes to a frame that parses
    back to it, and that frame is a fixed point."""
    try:
        obj = parse_frame(data)
    except Error:
        return False
    try:
        frame = serialize_frame(obj)
    except ProtocolError as e:  # escaping made the body larger than a frame may be
        _require(e.code == "bad-frame", f"serialize raised {e.code}")
        return True
    again = parse_frame(frame)
    _require(_same_json(again, obj), "control frame: parse(serialize()) differs")
    _require(serialize_frame(again) == frame, "control frame: serialize() is not stable")
    return True


# -- the daemon's configuration ---------------------------------------------------------------


def check_config(data: bytes) -> bool:
    """``parse_config`` (imaguard.toml): no serializer, so only the error contract, and that
    a parsed config answers its derived settings."""
    try:
        config = parse_config(data, source="<fuzz>", base="/")
    except Error:
        return False
    _require(all(os.path.isabs(p) for p in config.watch), "a relative watch path survived")
    _ = (config.trust_dir, config.guard_mode, config.permissive)
    return True


def check_owner(data: bytes) -> bool:
    """``parse_owner`` (an owners.d file): no serializer, so only the error contract."""
    try:
        owner = parse_owner(data, source="<fuzz>", base="/")
    except Error:
        return False
    _require(bool(owner.uids or owner.gids or owner.units or owner.exes), "an owner of nobody")
    return True


# -- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One harness: its name and its check; seeds and regressions live under fuzz/."""

    name: str
    check: Callable[[bytes], bool]
    """True: the input parsed and kept every promise; False: refused with an imaguard.Error."""

    @property
    def seeds(self) -> Path:
        return FUZZ_DIR / "seeds" / self.name

    @property
    def regressions(self) -> Path:
        return FUZZ_DIR / "regressions" / self.name


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("xattr", check_xattr),
        Target("policy-kernel", check_policy_kernel),
        Target("policy-imaguard", check_policy_imaguard),
        Target("measurelist-binary", check_measurelist_binary),
        Target("measurelist-ascii", check_measurelist_ascii),
        Target("keylime", check_keylime),
        Target("digestlist", check_digestlist),
        Target("protocol", check_protocol),
        Target("config", check_config),
        Target("owner", check_owner),
    )
}


def inputs(target: Target) -> list[Path]:
    """Every seed and regression input of ``target``, sorted by path."""
    found: list[Path] = []
    for directory in (target.seeds, target.regressions):
        if directory.is_dir():
            found += sorted(p for p in directory.iterdir() if p.is_file())
    return found
