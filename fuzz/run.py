"""Fuzz one target with atheris: ``python -m fuzz.run NAME [libFuzzer options] [CORPUS ...]``.

NAME is a key of ``fuzz.targets.TARGETS``; the rest goes to libFuzzer unchanged
(``-runs=N``, ``-max_total_time=S``, ``-artifact_prefix=DIR/``, corpus directories...).
imaguard is imported here for the first time, inside ``atheris.instrument_imports``, so its
code reports coverage. ``make fuzz`` (``fuzz/campaign.py``) runs every target this way.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import atheris  # type: ignore[import-untyped]

    names = argv[1:2]
    with atheris.instrument_imports(include=["imaguard", "json", "tomllib"]):
        from fuzz.targets import TARGETS
    if not names or names[0] not in TARGETS:
        print(f"usage: python -m fuzz.run {{{','.join(TARGETS)}}} [libFuzzer options]")
        return 2
    check = TARGETS[names[0]].check

    def test_one_input(data: bytes) -> None:
        check(data)  # the verdict is not libFuzzer's business; only exceptions are

    atheris.Setup([argv[0], *argv[2:]], test_one_input)
    atheris.Fuzz()
    return 0  # atheris.Fuzz() exits the process itself


if __name__ == "__main__":
    sys.exit(main(sys.argv))
