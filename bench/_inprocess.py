"""Child process for the in-process figure: ``imaguard.hash_file`` timed inside Python.

Usage: ``python bench/_inprocess.py FILE REPS``; prints one JSON object on stdout.
Run in a fresh interpreter so its peak RSS (measured by the parent with wait4) is that of
a Python process that imported imaguard and hashed the file, nothing else. As a reference
it also times a plain hashlib loop (1 MiB readinto, the same buffer size imaguard uses):
the ceiling for any Python code hashing through OpenSSL.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time


def main() -> None:
    path, reps = sys.argv[1], int(sys.argv[2])
    t0 = time.perf_counter()
    import imaguard

    import_s = time.perf_counter() - t0
    lib: list[float] = []
    digest = ""
    for _ in range(reps):
        t = time.perf_counter()
        d = imaguard.hash_file(path, "sha256")
        lib.append(time.perf_counter() - t)
        digest = d.hex
    ref: list[float] = []
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    for _ in range(reps):
        t = time.perf_counter()
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        ref.append(time.perf_counter() - t)
        if h.hexdigest() != digest:
            raise SystemExit("hashlib and imaguard.hash_file disagree")
    json.dump(
        {"import_s": import_s, "hash_file_s": lib, "hashlib_s": ref, "digest": digest}, sys.stdout
    )


if __name__ == "__main__":
    main()
