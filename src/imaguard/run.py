"""``python -m imaguard.run --keyring DIR [--mode enforce|log] script.py [args]``.

Runs a Python script under the import guard (:func:`imaguard.loaders.install_import_guard`):
the script itself and every module it imports afterwards are verified from the bytes that
are then compiled. Exit 2 with one message when the script is refused; the script's own
exit status otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m imaguard.run",
        description="Run a Python script, importing only verified modules.",
    )
    p.add_argument("--keyring", action="append", required=True, help="certificates; repeatable")
    p.add_argument("--mode", choices=("enforce", "log"), default="enforce")
    p.add_argument("--store", default=None, help="xattr, user-xattr or sigfile")
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    ns = p.parse_args(argv)

    import runpy

    from imaguard.crypto import Keyring
    from imaguard.errors import Error
    from imaguard.loaders import install_import_guard

    try:
        ring = Keyring.load(*ns.keyring)
        ig = install_import_guard(ring, mode=ns.mode, store=ns.store)
        script = os.path.abspath(ns.script)
        data, value, verdict = ig.read_value(script)
        ig.judge(script, data, verdict, value)
    except (Error, ImportError) as e:
        print(f"imaguard.run: {e}", file=sys.stderr)
        return 2
    sys.argv = [script, *ns.args]
    sys.path.insert(0, os.path.dirname(script))
    code = compile(data, script, "exec", dont_inherit=True)
    globs: dict[str, object] = {
        "__name__": "__main__",
        "__file__": script,
        "__builtins__": __builtins__,
    }
    del runpy
    try:
        exec(code, globs)  # noqa: S102 - the verified bytes of the script
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
