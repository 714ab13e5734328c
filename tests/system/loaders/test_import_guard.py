"""The Python import guard end to end: a real venv with rich installed, ``python -m imaguard.run``.

A temporary venv (``python -m venv --without-pip``) gets rich, pygments, markdown_it and
mdurl copied from the project's venv (that is installing them), byte-compiled, and the
whole site-packages signed with ``imaguard sign -r`` (sources and ``__pycache__``). imaguard
itself (and its dependencies, imported before the guard is installed) come from a ``.pth``
line naming ``src/`` and the project's site-packages, *after* the venv's own site-packages.

Each case runs under two launchers:

* ``imaguard.run``: ``venv/bin/python -m imaguard.run`` exactly as shipped;
* ``stdlib-only``: the same ``imaguard.run.main`` with the default exemption set to the
  interpreter's standard library only (``sysconfig``'s ``stdlib``), which is what the guard
  documents (the base installation's, never a venv's ``lib/pythonX.Y``, which holds
  ``site-packages``); both must refuse the same things.
"""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import imaguard
from imaguard.loaders._imports import stdlib_paths

from .conftest import IMAGUARD, TIMEOUT

SRC = Path(__file__).resolve().parents[3] / "src"
PACKAGES = ("rich", "pygments", "markdown_it", "mdurl")


FIXED_LAUNCHER = """
import sys, sysconfig
import imaguard.loaders._imports as imports
import imaguard.run
stdlib = sysconfig.get_paths()["stdlib"]
imports.stdlib_paths = lambda: (stdlib.rstrip("/") + "/",)
sys.exit(imaguard.run.main())
"""

APP = '''\
"""The application: imports rich (and modules named on the command line), prints a table."""
import importlib
import json
import sys


def stats():
    for f in sys.meta_path:
        if type(f).__name__ == "_Finder":
            g = f.ig
            return {"verified": g.verified, "refused": g.refused, "failures": g.failures}
    return None


try:
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.syntax import Syntax
    from rich.table import Table

    for name in sys.argv[1:]:
        importlib.import_module(name)
except ImportError as e:
    print(json.dumps({"refused": e.path, "msg": str(e), "guard": stats()}))
    sys.exit(3)

import rich

console = Console(width=60, color_system=None, force_terminal=False)
table = Table(title="verified imports")
table.add_column("package")
table.add_column("status")
table.add_row("rich", "verified")
console.print(table)
console.print(Markdown("*markdown* through markdown_it"))
console.print(Syntax("x = 1  # pygments", "python"))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {PACKAGES!r})
print(json.dumps({"rich": rich.__file__, "guard": stats(), "modules": loaded}))
'''.replace("{PACKAGES!r}", repr(set(PACKAGES)))

RELOAD = """\
import importlib
import json
import sys

mod = importlib.import_module(sys.argv[1])
with open(sys.argv[2], "a") as f:
    f.write("\\nTAMPERED = True\\n")
try:
    importlib.reload(mod)
except ImportError as e:
    print(json.dumps({"refused": e.path, "msg": str(e)}))
    sys.exit(3)
print(json.dumps({"reloaded": getattr(mod, "TAMPERED", False)}))
"""


@dataclass(frozen=True)
class Venv:
    root: Path
    site: Path
    ring: Path
    app: Path
    reload: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def module(self, rel: str) -> Path:
        return self.site / rel

    def pyc(self, rel: str) -> Path:
        return Path(importlib.util.cache_from_source(str(self.site / rel)))


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kw)


@pytest.fixture(scope="module")
def base_venv(
    tmp_path_factory: pytest.TempPathFactory,
    keys_dir: dict[str, Path],
) -> Venv:
    base = tmp_path_factory.mktemp("importguard")
    root = base / "venv"
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    assert r.returncode == 0, r.stderr
    python = root / "bin" / "python"
    r = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    site = Path(r.stdout.strip())
    assert site.is_dir()
    assert site.is_relative_to(root)
    here = Path(sysconfig.get_paths()["purelib"])
    for name in PACKAGES:
        src = here / name
        assert src.is_dir(), f"{name} is not installed in the project's venv ({here})"
        shutil.copytree(src, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    # imaguard and what it needs before the guard exists: after the venv's own packages.
    (site / "zz_imaguard.pth").write_text(f"{SRC}\n{here}\n")
    # Under `make unit`, coverage measures Python children through a .pth hook in the
    # project's venv (inactive unless its variables are set): the venv's children too.
    for hook in here.glob("*coverage*.pth"):
        shutil.copyfile(hook, site / f"zzz_{hook.name}")
    r = _run([str(python), "-m", "compileall", "-q", *(str(site / n) for n in PACKAGES)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert (site / "rich" / "__pycache__").is_dir()
    ring = keys_dir["ecdsa-p256"]
    app = base / "app.py"
    app.write_text(APP)
    reload = base / "reload_app.py"
    reload.write_text(RELOAD)
    r = _run(
        [
            str(IMAGUARD),
            "sign",
            "-r",
            "-k",
            str(ring / "private.pem"),
            str(site),
            str(app),
            str(reload),
        ]
    )
    assert r.returncode == 0, r.stderr
    return Venv(root, site, ring, app, reload)


@pytest.fixture
def venv(base_venv: Venv, tmp_path: Path) -> Venv:
    """A copy of the signed venv this test may tamper with (signatures and mtimes kept)."""
    root = tmp_path / "venv"
    shutil.copytree(base_venv.root, root, symlinks=True)  # copy2: xattrs and mtimes too
    v = Venv(
        root,
        root / base_venv.site.relative_to(base_venv.root),
        base_venv.ring,
        base_venv.app,
        base_venv.reload,
    )
    ring = imaguard.Keyring.load(v.ring / "cert.der")
    assert imaguard.appraise(v.module("rich/table.py"), ring).passed
    assert imaguard.appraise(v.pyc("rich/table.py"), ring).passed
    return v


Launcher = Callable[..., subprocess.CompletedProcess[str]]


def launcher(kind: str, v: Venv, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    head = ["-m", "imaguard.run"] if kind == "imaguard.run" else ["-c", FIXED_LAUNCHER]
    r = _run([str(v.python), *head, *(os.fspath(a) for a in args)])
    assert "Traceback" not in r.stderr, r.stderr
    return r


SHIPPED = pytest.param("imaguard.run", id="imaguard.run")
FIXED = pytest.param("stdlib-only", id="stdlib-only")


def app(
    kind: str, v: Venv, *modules: str, mode: str = "enforce"
) -> subprocess.CompletedProcess[str]:
    return launcher(kind, v, "--keyring", v.ring, "--mode", mode, v.app, *modules)


def last_json(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc = json.loads(r.stdout.splitlines()[-1])
    assert isinstance(doc, dict)
    return doc


def refused(r: subprocess.CompletedProcess[str], path: Path, cause: str) -> None:
    """The app was refused an import of exactly ``path`` for ``cause``."""
    assert r.returncode == 3, (r.stdout, r.stderr)
    doc = last_json(r)
    assert doc["refused"] == str(path)
    assert doc["msg"].startswith(f"imaguard refused to import {path}: ")
    assert f"({cause})" in doc["msg"]


# --- the signed application ---------------------------------------------------------


@pytest.mark.parametrize("kind", [SHIPPED, FIXED])
def test_signed_app_runs_and_prints_the_table(base_venv: Venv, kind: str) -> None:
    r = app(kind, base_venv)
    assert r.returncode == 0, r.stderr
    assert "verified imports" in r.stdout
    assert "┃ package ┃ status   ┃" in r.stdout
    assert "│ rich    │ verified │" in r.stdout
    assert "markdown through markdown_it" in r.stdout
    assert "x = 1  # pygments" in r.stdout
    doc = last_json(r)
    assert doc["rich"] == str(base_venv.module("rich/__init__.py"))  # the venv's copy
    assert {m.split(".")[0] for m in doc["modules"]} == set(PACKAGES)


@pytest.mark.parametrize("kind", [SHIPPED, FIXED])
def test_every_imported_package_module_was_verified(base_venv: Venv, kind: str) -> None:
    r = app(kind, base_venv)
    assert r.returncode == 0, r.stderr
    doc = last_json(r)
    guard = doc["guard"]
    # The script itself, then each module of the four packages (its .pyc or its source).
    assert guard["refused"] == 0
    assert guard["failures"] == []
    assert guard["verified"] >= 1 + len(doc["modules"]), guard


def test_default_exemption_is_the_standard_library_only() -> None:
    """This process runs in a venv too: its site-packages must not be exempt."""
    paths = sysconfig.get_paths()
    site = os.path.realpath(paths["purelib"]) + "/"
    exempt = stdlib_paths()
    assert os.path.realpath(paths["stdlib"]) + "/" in exempt
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in a venv")
    covering = [p for p in exempt if site.startswith(p)]
    assert covering == [], f"{covering} covers {site}"


# --- refused imports -----------------------------------------------------------------


@pytest.mark.parametrize("kind", [SHIPPED, FIXED])
def test_tampered_py_is_refused(venv: Venv, kind: str) -> None:
    target = venv.module("rich/table.py")
    with open(target, "a") as f:
        f.write("\nprint('TAMPERED')\n")
    r = app(kind, venv)
    refused(r, target, "invalid-signature")
    assert "TAMPERED" not in r.stdout


@pytest.mark.parametrize("kind", [SHIPPED, FIXED])
def test_tampered_pyc_is_refused(venv: Venv, kind: str) -> None:
    source = venv.module("rich/table.py")
    pyc = venv.pyc("rich/table.py")
    data = bytearray(pyc.read_bytes())
    st = source.stat()
    # The header still matches the source (timestamp-based pyc: mtime and size).
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], "little") == 0
    assert int.from_bytes(data[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
    assert int.from_bytes(data[12:16], "little") == st.st_size & 0xFFFFFFFF
    data[len(data) // 2] ^= 0xFF  # one byte of the marshalled code
    with open(pyc, "r+b") as f:  # same inode: it keeps its (now wrong) signature
        f.write(data)
    refused(app(kind, venv), pyc, "invalid-signature")


@pytest.mark.parametrize("kind", [SHIPPED, FIXED])
def test_unsigned_module_dropped_into_the_package_is_refused(venv: Venv, kind: str) -> None:
    dropped = venv.module("rich/dropped.py")
    dropped.write_text("print('DROPPED')\n")
    r = app(kind, venv, "rich.dropped")
    refused(r, dropped, "IMA-signature-required")
    assert "DROPPED" not in r.stdout


@pytest.mark.parametrize("kind", [SHIPPED, FIXED])
def test_reload_after_tampering_is_refused(venv: Venv, kind: str) -> None:
    target = venv.module("rich/abc.py")
    r = launcher(kind, venv, "--keyring", venv.ring, venv.reload, "rich.abc", target)
    refused(r, target, "invalid-signature")


# --- bytecode ---------------------------------------------------------------------------------


def _pyc_for(source: Path, code_text: str) -> bytes:
    """A timestamp .pyc whose header matches ``source`` but whose code is ``code_text``."""
    st = source.stat()
    code = compile(code_text, str(source), "exec")
    return (
        importlib.util.MAGIC_NUMBER
        + (0).to_bytes(4, "little")
        + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
        + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
        + marshal.dumps(code)
    )


def _same_python(v: Venv) -> None:
    r = _run(
        [str(v.python), "-c", "import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())"]
    )
    assert r.stdout.strip() == importlib.util.MAGIC_NUMBER.hex()  # marshal format matches


@pytest.mark.parametrize("kind", [SHIPPED, FIXED])
def test_unsigned_pyc_next_to_a_signed_source_is_ignored(venv: Venv, kind: str) -> None:
    _same_python(venv)
    source = venv.module("rich/abc.py")
    pyc = venv.pyc("rich/abc.py")
    pyc.unlink()
    pyc.write_bytes(_pyc_for(source, source.read_text() + "\nprint('EVIL-PYC')\n"))
    # Without the guard, Python would use that .pyc:
    plain = _run([str(venv.python), "-c", "import rich.abc"])
    assert plain.stdout == "EVIL-PYC\n"
    r = app(kind, venv, "rich.abc")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "EVIL-PYC" not in r.stdout
    assert last_json(r)["guard"]["refused"] == 0


@pytest.mark.parametrize("kind", [SHIPPED, FIXED])  # plain Python would do the same
def test_signed_pyc_is_used_when_its_header_matches(
    venv: Venv, kind: str, ec_key: imaguard.PrivateKey
) -> None:
    _same_python(venv)
    source = venv.module("rich/abc.py")
    pyc = venv.pyc("rich/abc.py")
    pyc.unlink()
    pyc.write_bytes(_pyc_for(source, source.read_text() + "\nprint('FROM-SIGNED-PYC')\n"))
    imaguard.sign_file(pyc, ec_key, "sha256")
    r = app(kind, venv, "rich.abc")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "FROM-SIGNED-PYC" in r.stdout  # the verified bytecode ran: no compile
    # A stale header (the source's mtime moved): the verified source is compiled instead.
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    r = app(kind, venv, "rich.abc")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "FROM-SIGNED-PYC" not in r.stdout


# --- log mode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [SHIPPED, FIXED])
def test_log_mode_imports_and_counts_the_failure(venv: Venv, kind: str) -> None:
    dropped = venv.module("rich/dropped.py")
    dropped.write_text("print('DROPPED')\n")
    r = app(kind, venv, "rich.dropped", mode="log")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "DROPPED" in r.stdout  # imported anyway
    assert "│ rich    │ verified │" in r.stdout
    guard = last_json(r)["guard"]
    failure = f"{dropped}: no-xattr (IMA-signature-required) - no value stored for this file"
    assert guard["refused"] == 1
    assert guard["failures"] == [failure]
    assert f"import (log mode): {failure}" in r.stderr
    # The same app in enforce mode is refused.
    refused(app(kind, venv, "rich.dropped"), dropped, "IMA-signature-required")
