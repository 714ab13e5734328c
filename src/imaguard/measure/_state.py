"""Reading a log without opening a :class:`LogStore`: a state directory read-only, and a
measurement list in either format."""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from imaguard.errors import Error
from imaguard.formats.measurelist import RawRecord, detect
from imaguard.measure._logstore import LOG_NAME, STATE_NAME
from imaguard.measure._verify import Finding, records_from_ascii, records_from_binary


class StateLog(NamedTuple):
    """A state directory's log as stored: the binary list (sha1 column) and its PCR banks."""

    data: bytes
    banks: tuple[str, ...]


def read_state(state: str | os.PathLike[str]) -> StateLog:
    """Read STATE's log and bank list without locking, repairing or writing anything.

    Use :class:`LogStore` to append; this is for showing, exporting and verifying a log
    another process may own. An :class:`~imaguard.errors.Error` names the directory when it
    is not a state directory.
    """
    try:
        with open(os.path.join(state, STATE_NAME)) as f:
            banks = tuple(str(b) for b in json.load(f)["banks"])
        with open(os.path.join(state, LOG_NAME), "rb") as f:
            return StateLog(f.read(), banks)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Error(f"{os.fspath(state)}: not a measurement state directory ({e})") from e


def records_from_any(
    data: bytes, bank: str = "sha1"
) -> tuple[list[RawRecord], str, Finding | None]:
    """Raw records of a binary or ASCII list (told apart by :func:`~imaguard.formats.
    measurelist.detect`), the bank of its template-digest column and any parse finding.

    BANK is the column's bank for a binary list; an ASCII list's is read from its width.
    """
    if detect(data) == "binary":
        records, problem = records_from_binary(data, bank)
        return records, bank, problem
    return records_from_ascii(data)
