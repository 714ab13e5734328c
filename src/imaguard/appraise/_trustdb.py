"""The trust database: every loaded digest list merged into one memory-mapped sorted table.

A directory (the daemon's ``STATE/trust``) holds::

    manifest.json          generation, the table files of each algorithm, the lists loaded
    lists/ID.list          each list as it was added (signed), ID = 32 hex digits of the
                           SHA-256 of the list without its signature
    table-GEN-ALGO-*.bin   the tables of one algorithm (below)

Table file (integers little-endian, so a lookup reads them straight from the mmap)::

    0     8   magic b"IGTRUST\\0"
    8     4   version 1
    12    2   algorithm id        14  2  digest size D
    16    8   count N             24  8  reserved
    32        index: 65,537 u32 - entries whose digest starts with the 2 bytes p are
              index[p] .. index[p+1]-1
    ...       N digests of D bytes, sorted (a digest held by several lists appears once a list)
    ...       N u32: the list number (position in the manifest's ``lists``) of each entry

Opening maps the file: no parsing pass, whatever its size. A lookup reads two index words
and bisects the few entries that share the first two bytes. A change writes a new table
and manifest beside the old ones and renames the manifest into place: a reader keeps the
old table until it calls :meth:`TrustDB.refresh`, so trusted files are never denied while
an update runs. Adding a list writes a small table of its own (O(list)); a lookup reads
the base table and the small ones; past four small tables they are folded into the base
(O(table) byte copies, now and then). Removing a list marks it removed (its entries stop
vouching at once) and the tables are rebuilt without it when a quarter of the entries are
dead. The manifest's ``tables`` maps each algorithm to its table files, base first.

Lists are verified before they are added (:meth:`TrustDB.add`), against the keyring the
caller passes (the daemon's ``digestlist_keyrings``): a list with a bad signature, a
newer format, unsorted or duplicate entries or a truncated body is refused whole, and the
database stays as it was.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaguard._fsutil import atomic_write
from imaguard.errors import FormatError, UsageError, VerificationError
from imaguard.formats import digestlist as dlformat
from imaguard.formats.hashalgo import HashAlgo, by_id, by_name

__all__ = ["ListInfo", "TrustDB", "verify_list"]

_log = logging.getLogger(__name__)

TABLE_MAGIC = b"IGTRUST\0"
_THEAD = struct.Struct("<8sIHHQQ")
_INDEX = 65537
_INDEX_BYTES = _INDEX * 4
MANIFEST = "manifest.json"
MAX_DELTAS = 4  # small tables (one a list added) before they are folded into the base


@dataclass(frozen=True)
class ListInfo:
    """One loaded list, as the manifest keeps it."""

    id: str
    name: str
    source: str
    algorithm: str
    count: int
    signer: str | None
    key_id: str | None
    added: float
    removed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "algorithm": self.algorithm,
            "count": self.count,
            "signer": self.signer,
            "key_id": self.key_id,
            "added": self.added,
            "removed": self.removed,
        }


def verify_list(
    data: bytes, keyring: Any, *, signature: bytes | None = None, name: str = "<list>"
) -> tuple[dlformat.DigestList, Any]:
    """Parse a list and verify its signature (appended, or ``signature``); (list, verdict).

    Raises FormatError for a malformed list and VerificationError for a signature that is
    missing or does not verify: the list is then refused whole.
    """
    from imaguard.appraise._calls import appraise

    body, appended = dlformat.split_signature(data)
    dl = dlformat.parse(body)
    value = signature if signature is not None else appended
    if value is None:
        raise VerificationError(f"{name}: the digest list is not signed")
    verdict = appraise(body, keyring, value=value)
    if not verdict.passed:
        raise VerificationError(
            f"{name}: the digest list's signature does not verify ({verdict.describe()})", verdict
        )
    return dl, verdict


class _Table:
    """One mapped table file."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < _THEAD.size + _INDEX_BYTES:
                raise FormatError(f"{path}: truncated trust table")
            self.mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, version, algo_id, dsize, count, _ = _THEAD.unpack_from(self.mm)
        if magic != TABLE_MAGIC or version != 1:
            raise FormatError(f"{path}: not a version-1 trust table")
        self.algorithm = by_id(algo_id)
        self.dsize: int = dsize
        self.count: int = count
        self.index = _THEAD.size
        self.entries = self.index + _INDEX_BYTES
        self.owners = self.entries + count * dsize
        if size != self.owners + 4 * count:
            raise FormatError(f"{path}: trust table size does not match its count")
        self.view = memoryview(self.mm)
        self.idx = self.view[self.index : self.entries].cast("I")
        self.own = self.view[self.owners : self.owners + 4 * count].cast("I")

    def find(self, digest: bytes) -> list[int]:
        """The list numbers of every entry equal to ``digest``."""
        d = self.dsize
        if len(digest) != d:
            return []
        p = (digest[0] << 8) | digest[1]
        idx = self.idx
        lo, hi = idx[p], idx[p + 1]
        if lo == hi:
            return []
        # The entries sharing the first two bytes are few (about N / 65,536): search their
        # bytes at C speed, accepting only a match that starts on an entry boundary.
        start = self.entries + lo * d
        block = self.mm[start : self.entries + hi * d]
        out: list[int] = []
        at = block.find(digest)
        while at >= 0:
            if at % d == 0:
                out.append(self.own[lo + at // d])
                at = block.find(digest, at + d)
            else:
                at = block.find(digest, at + 1)
        return out

    def digests(self) -> memoryview:
        return self.view[self.entries : self.owners]

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.idx.release()
            self.own.release()
            self.view.release()
            self.mm.close()


def _index_of(entries: bytes, d: int, count: int) -> list[int]:
    """index[p] = the first entry whose 2-byte prefix is >= p (the running sum of counts)."""
    counts = [0] * _INDEX
    for i in range(0, count * d, d):
        counts[(entries[i] << 8) | entries[i + 1]] += 1
    index = [0] * _INDEX
    total = 0
    for p in range(_INDEX):
        index[p] = total
        total += counts[p]
    return index


def _write_table(
    path: str,
    algo: HashAlgo,
    entries: bytes,
    owners: bytes,
    count: int,
    index: list[int] | None = None,
) -> None:
    """Write a table from ``entries`` (count sorted digests) and ``owners`` (count u32)."""
    d = algo.digest_size
    if index is None:
        index = _index_of(entries, d, count)
    head = _THEAD.pack(TABLE_MAGIC, 1, algo.id, d, count, 0)
    data = b"".join((head, struct.pack(f"<{_INDEX}I", *index), entries, owners))
    atomic_write(path, data, mode=0o644)


class TrustDB:
    """The trust database in ``directory`` (created on first change)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._lock = threading.Lock()
        self._tables: dict[str, list[_Table]] = {}
        self._lists: list[ListInfo] = []
        self._generation = -1
        self._stamp: tuple[int, int] | None = None
        self.refresh()

    # -- reading ------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    def lists(self, *, include_removed: bool = False) -> list[ListInfo]:
        return [li for li in self._lists if include_removed or not li.removed]

    def refresh(self) -> bool:
        """Take up the newest manifest if it changed; True when it did."""
        path = self.dir / MANIFEST
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        doc = json.loads(path.read_text())
        if doc.get("format") != 1:
            raise FormatError(f"{path}: not a format-1 trust manifest")
        tables = {
            algo: [_Table(str(self.dir / n)) for n in names]
            for algo, names in doc["tables"].items()
        }
        lists = [ListInfo(**li) for li in doc["lists"]]
        with self._lock:
            old = self._tables
            self._tables, self._lists = tables, lists
            self._generation, self._stamp = int(doc["generation"]), stamp
        for ts in old.values():
            for t in ts:
                t.close()
        return True

    def lookup(self, digest: bytes, algorithm: str = "sha256") -> list[ListInfo]:
        """The (not removed) lists that vouch for ``digest``; empty when none does."""
        tables = self._tables.get(algorithm)
        if not tables:
            return []
        lists = self._lists
        found: list[ListInfo] = []
        for table in tables:
            for n in table.find(digest):
                if n < len(lists) and not lists[n].removed:
                    found.append(lists[n])
        return found

    def vouches(self, digest: bytes, algorithm: str = "sha256") -> ListInfo | None:
        found = self.lookup(digest, algorithm)
        return found[0] if found else None

    def algorithms(self) -> list[str]:
        return sorted(self._tables)

    def __len__(self) -> int:
        return sum(t.count for ts in self._tables.values() for t in ts)

    # -- changing ------------------------------------------------------------------------
    def add(
        self,
        data: bytes,
        keyring: Any,
        *,
        name: str | None = None,
        signature: bytes | None = None,
    ) -> ListInfo:
        """Verify a signed list and merge it in; the database is unchanged if it fails."""
        label = name or "<list>"
        dl, verdict = verify_list(data, keyring, signature=signature, name=label)
        body, _ = dlformat.split_signature(data)
        if signature is not None:
            data = dlformat.append_signature(body, signature)
        list_id = hashlib.sha256(body).hexdigest()[:32]  # the list, whoever signed it
        with self._changing() as (doc, lists):
            if any(li.id == list_id and not li.removed for li in lists):
                raise UsageError(f"{label}: this digest list is already loaded (id {list_id})")
            info = ListInfo(
                list_id,
                name or dl.source or list_id,
                dl.source,
                dl.algorithm.name,
                len(dl),
                verdict.signer,
                verdict.key_id_hex,
                time.time(),
            )
            (self.dir / "lists").mkdir(parents=True, exist_ok=True)
            atomic_write(self.dir / "lists" / f"{list_id}.list", data, mode=0o644)
            number = len(lists)
            lists.append(info)
            self._merge(doc, dl.algorithm, dl.digests, number)
        return info

    def remove(self, which: str) -> ListInfo:
        """Mark a list (by id, id prefix or name) removed; its entries stop vouching now."""
        with self._changing() as (doc, lists):
            matches = [
                i
                for i, li in enumerate(lists)
                if not li.removed and (li.id.startswith(which) or li.name == which)
            ]
            if not matches:
                raise UsageError(f"no loaded digest list is named or has the id {which!r}")
            if len(matches) > 1:
                raise UsageError(f"{which!r} names {len(matches)} lists: give the id")
            i = matches[0]
            li = lists[i]
            lists[i] = ListInfo(**{**li.to_dict(), "removed": True})
            dead = sum(x.count for x in lists if x.removed)
            live = sum(x.count for x in lists if not x.removed)
            if dead * 3 > live:
                self._rebuild(doc, lists)
        return lists[i] if i < len(lists) else ListInfo(**{**li.to_dict(), "removed": True})

    @contextlib.contextmanager
    def _changing(self) -> Iterator[tuple[dict[str, Any], list[ListInfo]]]:
        """Hold the directory's lock; write the new manifest at the end (all or nothing)."""
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._stamp = None
            self.refresh()
            doc: dict[str, Any] = {
                "format": 1,
                "generation": self._generation + 1,
                "tables": {
                    a: [os.path.basename(t.path) for t in ts] for a, ts in self._tables.items()
                },
            }
            lists = list(self._lists)
            yield doc, lists
            doc["lists"] = [li.to_dict() for li in lists]
            atomic_write(self.dir / MANIFEST, json.dumps(doc, indent=1).encode(), mode=0o644)
            self._stamp = None
            self.refresh()
            self._collect(doc)
        finally:
            os.close(lock_fd)

    def _merge(
        self, doc: dict[str, Any], algo: HashAlgo, digests: tuple[bytes, ...], number: int
    ) -> None:
        """Add a list as a small table of its own (O(list)); fold the small tables into
        the base one when there are more than :data:`MAX_DELTAS` (O(table), now and then)."""
        gen = doc["generation"]
        names: list[str] = doc["tables"].setdefault(algo.name, [])
        name = f"table-{gen}-{algo.name}-{len(names)}.bin"
        _write_table(
            str(self.dir / name),
            algo,
            b"".join(digests),
            struct.pack("<I", number) * len(digests),
            len(digests),
        )
        names.append(name)
        if len(names) > 1 + MAX_DELTAS:
            self._fold(doc, algo)

    def _fold(self, doc: dict[str, Any], algo: HashAlgo) -> None:
        """One table from the algorithm's tables (a k-way merge of sorted byte runs)."""
        d = algo.digest_size
        tables = [_Table(str(self.dir / n)) for n in doc["tables"][algo.name]]
        try:
            base = max(tables, key=lambda t: t.count)
            others = [t for t in tables if t is not base]
            small = sorted(
                (t.digests()[i * d : i * d + d].tobytes(), t.own[i])
                for t in others
                for i in range(t.count)
            )
            entries_v, owners_v = base.digests(), base.own.tobytes()
            keys = _Keys(base)
            parts_e: list[bytes | memoryview] = []
            parts_o: list[bytes] = []
            prev = 0
            for dg, owner in small:
                pos = bisect.bisect_right(keys, dg)
                if pos > prev:
                    parts_e.append(entries_v[prev * d : pos * d])
                    parts_o.append(owners_v[prev * 4 : pos * 4])
                    prev = pos
                parts_e.append(dg)
                parts_o.append(struct.pack("<I", owner))
            parts_e.append(entries_v[prev * d :])
            parts_o.append(owners_v[prev * 4 :])
            count = base.count + len(small)
            added = [0] * _INDEX
            for dg, _ in small:
                added[((dg[0] << 8) | dg[1]) + 1] += 1
            index = list(base.idx)
            shift = 0
            for p in range(_INDEX):
                shift += added[p]
                index[p] += shift
            name = f"table-{doc['generation']}-{algo.name}-base.bin"
            _write_table(
                str(self.dir / name), algo, b"".join(parts_e), b"".join(parts_o), count, index
            )
        finally:
            for t in tables:
                t.close()
        doc["tables"][algo.name] = [name]

    def _rebuild(self, doc: dict[str, Any], lists: list[ListInfo]) -> None:
        """A table per algorithm from the live lists only; removed lists are dropped."""
        live = [li for li in lists if not li.removed]
        lists[:] = live
        doc["tables"] = {}
        by_algo: dict[str, list[tuple[bytes, int]]] = {}
        for n, li in enumerate(live):
            data = (self.dir / "lists" / f"{li.id}.list").read_bytes()
            body, _ = dlformat.split_signature(data)
            dl = dlformat.parse(body)
            by_algo.setdefault(li.algorithm, []).extend((dg, n) for dg in dl.digests)
        for algo_name, pairs in by_algo.items():
            pairs.sort()
            algo = by_name(algo_name)
            name = f"table-{doc['generation']}-{algo_name}.bin"
            _write_table(
                str(self.dir / name),
                algo,
                b"".join(p[0] for p in pairs),
                struct.pack(f"<{len(pairs)}I", *(p[1] for p in pairs)),
                len(pairs),
            )
            doc["tables"][algo_name] = [name]

    def _collect(self, doc: dict[str, Any]) -> None:
        """Remove table files and list files no manifest refers to any more."""
        keep = {n for names in doc["tables"].values() for n in names}
        for p in self.dir.glob("table-*.bin"):
            if p.name not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()  # a reader that mapped it keeps its pages
        ids = {li["id"] for li in doc["lists"]}
        lists_dir = self.dir / "lists"
        if lists_dir.is_dir():
            for p in lists_dir.glob("*.list"):
                if p.stem not in ids:
                    with contextlib.suppress(OSError):
                        p.unlink()

    def close(self) -> None:
        for ts in self._tables.values():
            for t in ts:
                t.close()
        self._tables = {}


class _Keys:
    """The digests of a table as a sequence, for bisect."""

    def __init__(self, t: _Table) -> None:
        self.t = t

    def __len__(self) -> int:
        return self.t.count

    def __getitem__(self, i: int) -> bytes:
        d, base = self.t.dsize, self.t.entries
        return self.t.mm[base + i * d : base + i * d + d]
