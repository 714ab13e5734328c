"""The IMA measurement list the agent serves: imaguard's log, in the kernel's ASCII format.

The enforcement daemon (or ``imaguard measure``) owns the log in the state directory
(``binary_runtime_measurements``, see :mod:`imaguard.measure`); the agent only reads it,
without the lock. The log is append-only and each entry is durable before its PCR is
extended, so a list read *after* a quote holds every entry the quoted PCR 10 covers
(Keylime replays until the PCR matches). A record cut short at the end (a write in
progress) is not served yet.

Lines are what ``/sys/kernel/security/ima/ascii_runtime_measurements`` shows
(``ima_ascii_measurements_show``, security/integrity/ima/ima_fs.c): PCR, the SHA-1
template digest as stored (zeros for a violation), the template name and each field.
Parsed lines are kept, so a request for the entries from N on costs only the new ones.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from imaguard.errors import Error, TruncatedError
from imaguard.formats.measurelist import RawRecord, iter_binary, parse_binary
from imaguard.formats.template import render_field

__all__ = ["ImaList", "ImaSlice"]

LOG_NAME = "binary_runtime_measurements"


def _record_size(rec: RawRecord) -> int:
    """Bytes a binary record takes (ima_measurements_show, ima_fs.c)."""
    head = 4 + len(rec.digest) + 4 + len(rec.template_name.encode("ascii"))
    if rec.template_name == "ima":
        return head + 20 + 4 + len(rec.template_data[20:].rstrip(b"\0"))
    return head + 4 + len(rec.template_data)


def _complete_prefix(data: bytes) -> int:
    """Length of the records at the start of ``data`` that are whole."""
    end = 0
    try:
        for rec in iter_binary(data):
            end = rec.offset + _record_size(rec)
    except TruncatedError:
        pass
    return end


@dataclass(frozen=True)
class ImaSlice:
    """What one quote serves: the lines from ``start`` on, of ``total`` entries."""

    text: str
    start: int
    total: int


class ImaList:
    """The ASCII list of a state directory's log, read incrementally."""

    def __init__(self, state: str | os.PathLike[str]) -> None:
        self.path = os.path.join(os.fspath(state), LOG_NAME)
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._offset = 0
        self._ident: tuple[int, int] | None = None

    def _refresh(self) -> None:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                if ident != self._ident or st.st_size < self._offset:
                    # A new log (a new state directory, or the file replaced): start over.
                    self._lines, self._offset, self._ident = [], 0, ident
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            self._lines, self._offset, self._ident = [], 0, None
            return
        except OSError as e:
            raise Error(f"{self.path}: cannot read the measurement log ({e.strerror})") from e
        end = _complete_prefix(data)
        if end == 0:
            return
        for rec in parse_binary(data[:end]):
            entry = rec.entry
            parts = [f"{entry.pcr:2d}", rec.digest.hex(), entry.template.name]
            parts += [
                render_field(fid, value).decode("utf-8", "surrogateescape")
                for fid, value in zip(entry.template.fields, entry.fields, strict=True)
            ]
            self._lines.append(" ".join(parts) + "\n")
        self._offset += end

    def read(self, start: int = 0) -> ImaSlice:
        """The entries from ``start`` on; from 0 when the log has fewer than ``start``
        entries (a new log: Keylime's verifier then replays it from the beginning)."""
        with self._lock:
            self._refresh()
            total = len(self._lines)
            if start < 0 or start > total:
                start = 0
            return ImaSlice("".join(self._lines[start:]), start, total)
