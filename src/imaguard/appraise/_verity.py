"""fs-verity file digests, computed from the content (what ``fsverity digest`` prints).

The kernel reads the fs-verity digest of a file that has verity enabled; the digest
depends only on the content, so user space computes the same value from the bytes:

* the content is cut into 4096-byte blocks (the last one zero-padded) and each block is
  hashed; the hashes are packed into 4096-byte blocks (zero-padded) and hashed again,
  level by level, until one block remains; its hash is the **root hash** (an empty file
  has an all-zero root hash; a file of one block has the hash of that block);
* the digest is the hash of the 256-byte ``fsverity_descriptor``: version 1, the hash
  algorithm (1 = sha256, 2 = sha512), log2 of the block size, salt size 0, the data size
  (little-endian u64), the root hash zero-padded to 64 bytes, and zeros.

A sigv3 signature (``security.ima`` type 0x06) signs ``H(0x06 || algo || digest)``
(spec kernel-ima.md §3.5).
"""

from __future__ import annotations

import hashlib
import os
import struct

from imaguard.appraise._files import FileRef
from imaguard.errors import FileChangedError, FileError, FormatError

__all__ = ["VERITY_ALGORITHMS", "fsverity_digest", "fsverity_digest_bytes"]

BLOCK_SIZE = 4096
VERITY_ALGORITHMS = {"sha256": 1, "sha512": 2}
_DESCRIPTOR = struct.Struct("<BBBB4xQ64s32s144x")


def _root(level: list[bytes], algorithm: str) -> bytes:
    """Hash the level's blocks, pack the hashes into blocks; repeat to one block's hash."""
    while True:
        hashes = b"".join(hashlib.new(algorithm, block).digest() for block in level)
        if len(level) == 1:
            return hashes
        level = [
            hashes[i : i + BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0")
            for i in range(0, len(hashes), BLOCK_SIZE)
        ]


def _descriptor_digest(algorithm: str, size: int, root: bytes) -> bytes:
    desc = _DESCRIPTOR.pack(1, VERITY_ALGORITHMS[algorithm], 12, 0, size, root, b"")
    return hashlib.new(algorithm, desc).digest()


def _check(algorithm: str) -> None:
    if algorithm not in VERITY_ALGORITHMS:
        raise FormatError(f"fs-verity supports sha256 and sha512, not {algorithm}")


def fsverity_digest_bytes(data: bytes, algorithm: str = "sha256") -> bytes:
    """The fs-verity digest of ``data``."""
    _check(algorithm)
    if not data:
        return _descriptor_digest(algorithm, 0, b"\0" * hashlib.new(algorithm).digest_size)
    blocks = [
        data[i : i + BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0") for i in range(0, len(data), BLOCK_SIZE)
    ]
    return _descriptor_digest(algorithm, len(data), _root(blocks, algorithm))


def fsverity_digest(ref: FileRef, algorithm: str = "sha256") -> bytes:
    """The fs-verity digest of an open file (FileChangedError if it changes meanwhile).

    The data level is hashed while reading, so memory stays at one hash per block.
    """
    _check(algorithm)
    before = ref.st
    leaf_hashes = bytearray()
    offset = 0
    try:
        while True:
            chunk = os.pread(ref.fd, 1 << 20, offset)
            if not chunk:
                break
            for i in range(0, len(chunk), BLOCK_SIZE):
                block = chunk[i : i + BLOCK_SIZE]
                if len(block) < BLOCK_SIZE:
                    block = block.ljust(BLOCK_SIZE, b"\0")
                leaf_hashes += hashlib.new(algorithm, block).digest()
            offset += len(chunk)
            if len(chunk) % BLOCK_SIZE and offset < before.st_size:
                raise FileChangedError(ref.name, "changed while it was being hashed; not trusted")
    except OSError as e:
        raise FileError(ref.name, f"read failed: {e.strerror or e}") from e
    after = os.fstat(ref.fd)
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
    ) or offset != after.st_size:
        raise FileChangedError(ref.name, "changed while it was being hashed; not trusted")
    size = hashlib.new(algorithm).digest_size
    if offset == 0:
        return _descriptor_digest(algorithm, 0, b"\0" * size)
    if len(leaf_hashes) == size:
        return _descriptor_digest(algorithm, offset, bytes(leaf_hashes))
    level = [
        bytes(leaf_hashes[i : i + BLOCK_SIZE]).ljust(BLOCK_SIZE, b"\0")
        for i in range(0, len(leaf_hashes), BLOCK_SIZE)
    ]
    return _descriptor_digest(algorithm, offset, _root(level, algorithm))
