"""Child process for ``run.py --profile``: cProfile one imaguard command, import included.

Usage: ``python bench/_profile.py OUT.txt imaguard-args...``. The profiler is enabled
before ``imaguard.cli`` is imported, so startup shows up next to the per-file work. Run
the command with ``-j 1``: worker processes are not profiled. Writes the top functions by
cumulative and by own time to OUT.txt, and the raw stats to OUT.txt.pstats.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    prof = cProfile.Profile()
    prof.enable()
    try:
        from imaguard.cli import main as cli_main

        cli_main(args)
    except SystemExit as e:
        code = e.code
    else:  # pragma: no cover - main always exits
        code = 0
    finally:
        prof.disable()
    prof.dump_stats(out + ".pstats")
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    buf.write(f"imaguard {' '.join(args)}  (exit {code})\n\n== by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(40)
    buf.write("\n== by own (total) time ==\n")
    stats.sort_stats("tottime").print_stats(30)
    with open(out, "w") as f:
        f.write(buf.getvalue())
    sys.exit(code if isinstance(code, int) else 2)


if __name__ == "__main__":
    main()
