"""Types of the optional C extension built from _native.c (see setup.py)."""

from collections.abc import Sequence

SMALL: int
OPENSSL_VERSION: str

class QuickVerifier:
    def __init__(self, attribute: str) -> None: ...
    def run(self, paths: Sequence[str], /) -> bytes: ...
    def add(
        self,
        algo_id: int,
        key_id: int,
        md_name: str | None,
        spki_der: bytes | None = None,
        digest_size: int = 0,
        /,
    ) -> bool: ...

def scan_ima_ng(
    text: bytes, start: int, end: int, digest_bank: str, banks: tuple[str, ...], /
) -> tuple[int, int, bytes, tuple[bytes, ...], list[int], list[int]]: ...
def chain(
    bank: str, pcrs: bytes, values: bytes, watch: dict[int, bytes], /
) -> tuple[list[bytes], dict[int, list[int]]]: ...
def judge_ima_ng(
    text: bytes, hexsize: int, digests: dict[str, tuple[str, ...]], /
) -> list[tuple[int, int, int]]: ...
