"""The benchmark data: a scratch directory, a random file, a tree of files, and xattr helpers.

Everything is written under the scratch directory, which carries a marker file so that
``cleanup`` only ever removes a directory this benchmark created.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

MARKER = ".imaguard-bench"
ATTR = "security.ima"


def prepare_scratch(path: str) -> str:
    """Create (or adopt) the scratch directory; refuse a foreign non-empty directory."""
    path = os.path.abspath(path)
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, MARKER)):
        raise SystemExit(f"bench: {path} exists, is not empty and is not ours (no {MARKER})")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, MARKER), "w") as f:
        f.write("scratch data of imaguard's bench/run.py; safe to delete\n")
    return path


def cleanup(path: str) -> None:
    if os.path.exists(os.path.join(path, MARKER)):
        shutil.rmtree(path)


def _params_match(manifest: str, params: dict[str, object]) -> bool:
    try:
        with open(manifest) as f:
            return bool(json.load(f) == params)
    except (OSError, ValueError):
        return False


def _write_manifest(manifest: str, params: dict[str, object]) -> None:
    with open(manifest, "w") as f:
        json.dump(params, f)


def random_file(scratch: str, size: int) -> tuple[str, bool]:
    """A file of ``size`` random bytes; reused when a complete one is there. (path, reused)."""
    d = os.path.join(scratch, "hash")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"random-{size}.bin")
    manifest = path + ".done"
    params: dict[str, object] = {"size": size}
    if _params_match(manifest, params) and os.path.getsize(path) == size:
        return path, True
    chunk = 16 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())
    _write_manifest(manifest, params)
    return path, False


def warm_read(paths: list[str]) -> tuple[int, float]:
    """Read files once to put them in the page cache; (bytes, seconds)."""
    buf = bytearray(8 << 20)
    total = 0
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total, time.perf_counter() - t0


@dataclass(frozen=True)
class TreeSpec:
    small_files: int
    small_min: int
    small_max: int
    files_per_dir: int
    dirs_per_parent: int
    big_files: int
    big_size: int
    seed: int = 20261128


def make_tree(scratch: str, spec: TreeSpec) -> tuple[str, bool]:
    """The tree (reused when a complete one with the same spec is there). (root, reused).

    Small files: ``small/dAA/dBB/fCCC`` with ``files_per_dir`` files per leaf directory
    and ``dirs_per_parent`` leaf directories per parent; sizes uniform in
    [small_min, small_max] from a seeded generator, random content. Big files:
    ``big/bAA/gCCC`` (100 per directory) of ``big_size`` random bytes.
    """
    root = os.path.join(scratch, "tree")
    manifest = os.path.join(scratch, "tree.done")
    params = asdict(spec)
    if _params_match(manifest, params) and os.path.isdir(root):
        return root, True
    if os.path.exists(manifest):
        os.unlink(manifest)
    if os.path.exists(root):
        shutil.rmtree(root)
    rng = random.Random(spec.seed)
    for i in range(spec.small_files):
        leaf = i // spec.files_per_dir
        d = os.path.join(
            root,
            "small",
            f"d{leaf // spec.dirs_per_parent:03d}",
            f"d{leaf % spec.dirs_per_parent:03d}",
        )
        if i % spec.files_per_dir == 0:
            os.makedirs(d, exist_ok=True)
        size = rng.randint(spec.small_min, spec.small_max)
        with open(os.path.join(d, f"f{i % spec.files_per_dir:04d}"), "wb") as f:
            f.write(rng.randbytes(size))
    for i in range(spec.big_files):
        d = os.path.join(root, "big", f"b{i // 100:03d}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"g{i % 100:04d}"), "wb") as f:
            f.write(os.urandom(spec.big_size))
    os.sync()
    _write_manifest(manifest, params)
    return root, False


def files(root: str) -> Iterator[str]:
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            yield os.path.join(dirpath, name)


def clear_xattrs(paths: list[str]) -> None:
    for p in paths:
        try:
            os.removexattr(p, ATTR)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise


def xattr_census(paths: list[str]) -> tuple[int, str]:
    """(files that carry security.ima, a fingerprint over every path and value)."""
    count = 0
    h = hashlib.sha256()
    for p in sorted(paths):
        try:
            v = os.getxattr(p, ATTR)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
            continue
        count += 1
        h.update(p.encode() + b"\0" + v + b"\0")
    return count, h.hexdigest()
