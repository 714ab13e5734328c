#!/usr/bin/env bash
# make attest-demo: attest an imaguard host with an unchanged Keylime 7.14 (PyPI), on
# 127.0.0.1 only. The steps and what each shows are in scripts/attest_demo.py; this
# wrapper only finds the interpreters. Exit 0 only when the whole sequence was seen.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ ! -x $PY ]]; then
    echo "attest-demo: $PY is missing: run make venv (make attest-demo does)" >&2
    exit 2
fi
exec "$PY" scripts/attest_demo.py "$@"
