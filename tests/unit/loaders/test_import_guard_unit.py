"""The import guard in-process: a throwaway package in ``tmp_path``, verified on import.

Every test installs the guard with an explicit ``exempt`` (the standard library, the
project's site-packages and ``src/``) so that nothing pytest itself imports lazily meets
the guard; the package under test is outside all of them. The guard is uninstalled and the
package's modules dropped from ``sys.modules`` afterwards.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import marshal
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import imaguard
from imaguard.appraise import MemoryStore
from imaguard.core import Guard
from imaguard.core._audit import MemoryAudit
from imaguard.errors import UsageError
from imaguard.loaders import ImportGuard, install_import_guard
from imaguard.loaders._imports import stdlib_paths

SRC = Path(__file__).resolve().parents[3] / "src"
EXEMPT = (
    *stdlib_paths(),
    sysconfig.get_paths()["purelib"],
    sysconfig.get_paths()["platlib"],
    str(SRC),
)


@dataclass
class Pkg:
    """A package ``igpkg_<n>`` under ``root`` (on sys.path while the test runs)."""

    root: Path
    name: str
    key: imaguard.PrivateKey

    @property
    def dir(self) -> Path:
        return self.root / self.name

    def write(self, rel: str, text: str, *, sign: bool = True) -> Path:
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        if sign:
            imaguard.sign_file(p, self.key, "sha256")
        return p

    def mod(self, rel: str = "") -> str:
        return self.name + (f".{rel}" if rel else "")


_counter = iter(range(1_000_000))


@pytest.fixture
def pkg(tmp_path: Path, ec_key: imaguard.PrivateKey) -> Iterator[Pkg]:
    name = f"igpkg_{os.getpid()}_{next(_counter)}"
    p = Pkg(tmp_path / "lib", name, ec_key)
    p.write("__init__.py", "VALUE = 'init'\n")
    p.write("mod.py", "VALUE = 'signed'\n")
    sys.path.insert(0, str(p.root))
    importlib.invalidate_caches()
    try:
        yield p
    finally:
        sys.path.remove(str(p.root))
        for m in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[m]


Installer = Callable[..., ImportGuard]


@pytest.fixture
def guard(ec_ring: imaguard.Keyring) -> Iterator[Installer]:
    installed: list[ImportGuard] = []

    def install(**kw: object) -> ImportGuard:
        kw.setdefault("exempt", EXEMPT)
        ig = install_import_guard(ec_ring, **kw)  # type: ignore[arg-type]
        installed.append(ig)
        return ig

    try:
        yield install
    finally:
        for ig in installed:
            ig.uninstall()


def _refusal(e: pytest.ExceptionInfo[ImportError], path: Path, cause: str) -> None:
    assert e.value.path == str(path)
    assert str(e.value).startswith(f"imaguard refused to import {path}: ")
    assert f"({cause})" in str(e.value)


def _import(name: str) -> ModuleType:
    return importlib.import_module(name)


# --- sources ------------------------------------------------------------------------------


def test_signed_package_imports_and_is_counted(pkg: Pkg, guard: Installer) -> None:
    ig = guard()
    finder = sys.meta_path[0]
    assert type(finder).__name__ == "_Finder"
    mod = _import(pkg.mod("mod"))
    assert mod.VALUE == "signed"
    assert mod.__file__ == str(pkg.dir / "mod.py")
    assert ig.verified == 2  # the package's __init__ and the module
    assert (ig.refused, ig.failures) == (0, [])
    assert not (pkg.dir / "__pycache__").exists()  # the guard never writes bytecode
    assert inspect.getsource(mod) == "VALUE = 'signed'\n"
    ig.uninstall()
    assert finder not in sys.meta_path
    ig.uninstall()  # twice is fine


def test_unsigned_module_is_refused(pkg: Pkg, guard: Installer) -> None:
    p = pkg.write("bad.py", "RAN = True\n", sign=False)
    ig = guard()
    with pytest.raises(ImportError) as e:
        _import(pkg.mod("bad"))
    _refusal(e, p, "IMA-signature-required")
    assert str(e.value) == (
        f"imaguard refused to import {p}: no-xattr (IMA-signature-required) - "
        "no value stored for this file"
    )
    assert ig.refused == 1
    assert ig.failures == [
        f"{p}: no-xattr (IMA-signature-required) - no value stored for this file"
    ]
    assert pkg.mod("bad") not in sys.modules


def test_tampered_module_is_refused(pkg: Pkg, guard: Installer) -> None:
    p = pkg.dir / "mod.py"
    with open(p, "a") as f:
        f.write("EVIL = True\n")
    guard()
    with pytest.raises(ImportError) as e:
        _import(pkg.mod("mod"))
    _refusal(e, p, "invalid-signature")


def test_log_mode_imports_and_reports(
    pkg: Pkg, guard: Installer, caplog: pytest.LogCaptureFixture
) -> None:
    p = pkg.write("bad.py", "RAN = True\n", sign=False)
    ig = guard(mode="log")
    with caplog.at_level(logging.WARNING, logger="imaguard"):
        mod = _import(pkg.mod("bad"))
    assert mod.RAN is True
    assert ig.refused == 1
    assert ig.failures == [
        f"{p}: no-xattr (IMA-signature-required) - no value stored for this file"
    ]
    assert f"import (log mode): {p}: no-xattr" in caplog.text


def test_reload_goes_through_the_guard(pkg: Pkg, guard: Installer) -> None:
    ig = guard()
    mod = _import(pkg.mod("mod"))
    before = ig.verified
    importlib.reload(mod)
    assert ig.verified == before + 1
    p = pkg.dir / "mod.py"
    p.write_text("VALUE = 'tampered'\n")  # same inode: keeps the old signature
    with pytest.raises(ImportError) as e:
        importlib.reload(mod)
    _refusal(e, p, "invalid-signature")
    assert mod.VALUE == "signed"


def test_exempt_prefix_is_not_verified(pkg: Pkg, guard: Installer) -> None:
    pkg.write("bad.py", "RAN = True\n", sign=False)
    ig = guard(exempt=(*EXEMPT, str(pkg.root)))
    assert _import(pkg.mod("bad")).RAN is True
    assert (ig.verified, ig.refused) == (0, 0)


def test_default_exemption_is_stdlib_paths(ec_ring: imaguard.Keyring) -> None:
    ig = install_import_guard(ec_ring)
    try:
        assert ig.exempt == stdlib_paths()
        assert all(p.endswith("/") for p in ig.exempt)
        assert os.path.realpath(sysconfig.get_paths()["stdlib"]) + "/" in ig.exempt
    finally:
        ig.uninstall()


def test_usage_errors(ec_ring: imaguard.Keyring) -> None:
    n = len(sys.meta_path)
    with pytest.raises(UsageError, match="mode must be enforce or log"):
        install_import_guard(ec_ring, mode="fix")  # type: ignore[arg-type]
    assert len(sys.meta_path) == n


def test_keyring_as_a_directory(pkg: Pkg, keys_dir: dict[str, Path], guard: Installer) -> None:
    ig = guard()
    ig.uninstall()
    ig2 = install_import_guard(keys_dir["ecdsa-p256"], exempt=EXEMPT)
    try:
        assert _import(pkg.mod("mod")).VALUE == "signed"
        assert ig2.verified == 2
    finally:
        ig2.uninstall()


def test_read_and_read_value(pkg: Pkg, guard: Installer) -> None:
    ig = guard()
    data, verdict = ig.read(str(pkg.dir / "mod.py"))
    assert data == b"VALUE = 'signed'\n"
    assert verdict.passed
    assert verdict.target == str(pkg.dir / "mod.py")
    with pytest.raises(ImportError, match=r"missing\.py"):
        ig.read(str(pkg.dir / "missing.py"))


# --- bytecode -----------------------------------------------------------------------------


def _pyc(source: Path, code_text: str, *, hash_based: bool = False) -> bytes:
    code = marshal.dumps(compile(code_text, str(source), "exec"))
    if hash_based:
        h = importlib.util.source_hash(source.read_bytes())
        return importlib.util.MAGIC_NUMBER + (3).to_bytes(4, "little") + h + code
    st = source.stat()
    return (
        importlib.util.MAGIC_NUMBER
        + (0).to_bytes(4, "little")
        + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
        + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
        + code
    )


def _write_pyc(pkg: Pkg, rel: str, data: bytes, *, sign: bool) -> Path:
    cached = Path(importlib.util.cache_from_source(str(pkg.dir / rel)))
    cached.parent.mkdir(exist_ok=True)
    cached.write_bytes(data)
    if sign:
        imaguard.sign_file(cached, pkg.key, "sha256")
    return cached


def test_signed_pyc_with_a_matching_header_is_used(pkg: Pkg, guard: Installer) -> None:
    src = pkg.dir / "mod.py"
    _write_pyc(pkg, "mod.py", _pyc(src, "VALUE = 'from-pyc'\n"), sign=True)
    ig = guard()
    assert _import(pkg.mod("mod")).VALUE == "from-pyc"
    assert ig.verified == 2  # __init__.py, then mod's .pyc (its source not read)


def test_signed_pyc_with_a_stale_header_falls_back_to_the_source(
    pkg: Pkg, guard: Installer
) -> None:
    src = pkg.dir / "mod.py"
    _write_pyc(pkg, "mod.py", _pyc(src, "VALUE = 'from-pyc'\n"), sign=True)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 3 * 10**9))
    guard()
    assert _import(pkg.mod("mod")).VALUE == "signed"


def test_tampered_signed_pyc_is_refused(pkg: Pkg, guard: Installer) -> None:
    src = pkg.dir / "mod.py"
    cached = _write_pyc(pkg, "mod.py", _pyc(src, "VALUE = 'from-pyc'\n"), sign=True)
    data = bytearray(cached.read_bytes())
    data[-2] ^= 0x01
    with open(cached, "r+b") as f:
        f.write(data)
    guard()
    with pytest.raises(ImportError) as e:
        _import(pkg.mod("mod"))
    _refusal(e, cached, "invalid-signature")


def test_unsigned_pyc_is_ignored(pkg: Pkg, guard: Installer) -> None:
    src = pkg.dir / "mod.py"
    _write_pyc(pkg, "mod.py", _pyc(src, "VALUE = 'EVIL-PYC'\n"), sign=False)
    ig = guard()
    assert _import(pkg.mod("mod")).VALUE == "signed"
    assert ig.refused == 0


def test_signed_pyc_of_an_unsigned_source_with_a_stale_header_is_refused(
    pkg: Pkg, guard: Installer
) -> None:
    """The fallback to the source verifies the source: an unsigned source is refused."""
    src = pkg.write("other.py", "VALUE = 1\n", sign=False)
    _write_pyc(pkg, "other.py", _pyc(src, "VALUE = 2\n"), sign=True)
    src.write_text("VALUE = 3  # changed: the .pyc is stale\n")
    guard()
    with pytest.raises(ImportError) as e:
        _import(pkg.mod("other"))
    _refusal(e, src, "IMA-signature-required")


def test_hash_based_pyc(pkg: Pkg, guard: Installer) -> None:
    src = pkg.dir / "mod.py"
    _write_pyc(pkg, "mod.py", _pyc(src, "VALUE = 'from-hash-pyc'\n", hash_based=True), sign=True)
    ig = guard()
    assert _import(pkg.mod("mod")).VALUE == "from-hash-pyc"
    assert ig.verified == 3  # __init__.py, the .pyc, and the source it was checked against
    del sys.modules[pkg.mod("mod")]
    src.write_text("VALUE = 'new source'\n")  # the hash no longer matches; re-signed
    imaguard.sign_file(src, pkg.key, "sha256")
    assert _import(pkg.mod("mod")).VALUE == "new source"


def test_sourceless_module(pkg: Pkg, guard: Installer) -> None:
    code = marshal.dumps(compile("VALUE = 'sourceless'\n", "legacy.py", "exec"))
    header = importlib.util.MAGIC_NUMBER + bytes(12)
    legacy = pkg.dir / "legacy.pyc"
    legacy.write_bytes(header + code)
    unsigned = pkg.dir / "legacy_unsigned.pyc"
    unsigned.write_bytes(header + code)
    bad_magic = pkg.dir / "legacy_magic.pyc"
    bad_magic.write_bytes(b"\0\0\r\n" + bytes(12) + code)
    for p in (legacy, bad_magic):
        imaguard.sign_file(p, pkg.key, "sha256")
    guard()
    assert _import(pkg.mod("legacy")).VALUE == "sourceless"
    with pytest.raises(ImportError) as e:
        _import(pkg.mod("legacy_unsigned"))
    _refusal(e, unsigned, "IMA-signature-required")
    with pytest.raises(ImportError, match="bad magic number"):
        _import(pkg.mod("legacy_magic"))


EXT_C = r"""
#include <Python.h>
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "%(name)s", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_%(name)s(void) {
    PyObject *m = PyModule_Create(&def);
    if (m) PyModule_AddStringConstant(m, "VALUE", "extension");
    return m;
}
"""


def test_extension_module_is_verified_on_disk(pkg: Pkg, guard: Installer) -> None:
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    if shutil.which("gcc") is None or not os.path.exists(os.path.join(include, "Python.h")):
        pytest.skip("gcc or Python.h is missing: cannot build an extension module")
    for name, sign in (("ext_ok", True), ("ext_bad", False)):
        c = pkg.root / f"{name}.c"
        c.write_text(EXT_C % {"name": name})
        so = pkg.dir / f"{name}{suffix}"
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-O2", f"-I{include}", "-o", str(so), str(c)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        if sign:
            imaguard.sign_file(so, pkg.key, "sha256")
    ig = guard()
    assert _import(pkg.mod("ext_ok")).VALUE == "extension"
    assert ig.verified == 2
    with pytest.raises(ImportError) as e:
        _import(pkg.mod("ext_bad"))
    _refusal(e, pkg.dir / f"ext_bad{suffix}", "IMA-signature-required")


# --- the policy hook ------------------------------------------------------------------------


def _guard_with(tmp_path: Path, ring_dir: Path, text: str) -> Guard:
    pol = tmp_path / "imports.policy"
    pol.write_text(text)
    return Guard.from_files({"imports": pol}, [ring_dir], store=MemoryStore(), audit=MemoryAudit())


def test_policy_audits_each_verified_module(
    pkg: Pkg, guard: Installer, tmp_path: Path, keys_dir: dict[str, Path]
) -> None:
    g = _guard_with(tmp_path, keys_dir["ecdsa-p256"], "audit func=PYTHON_IMPORT\n")
    try:
        guard(policy=g)
        _import(pkg.mod("mod"))
        assert isinstance(g.audit, MemoryAudit)
        audited = {r["file"]: r for r in g.audit.records if r["action"] == "audit"}
        mod = pkg.dir / "mod.py"
        assert set(audited) == {str(pkg.dir / "__init__.py"), str(mod)}
        digest = hashlib.sha256(mod.read_bytes()).hexdigest()
        assert audited[str(mod)]["hash"] == f"sha256:{digest}"
        assert audited[str(mod)]["hook"] == "PYTHON_IMPORT"
    finally:
        g.close()


def test_policy_refusal(
    pkg: Pkg, guard: Installer, tmp_path: Path, keys_dir: dict[str, Path]
) -> None:
    g = _guard_with(
        tmp_path,
        keys_dir["ecdsa-p256"],
        "appraise func=PYTHON_IMPORT appraise_type=imasig appraise_algos=sha512\n",
    )
    try:
        ig = guard(policy=g)
        with pytest.raises(ImportError) as e:
            _import(pkg.mod("mod"))
        init = pkg.dir / "__init__.py"
        assert e.value.path == str(init)
        assert str(e.value) == (
            f"imaguard refused to import {init}: PYTHON_IMPORT: refused by the policy"
        )
        assert ig.refused == 1
    finally:
        g.close()


# --- python -m imaguard.run, in-process ------------------------------------------------------


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., int]]:
    """imaguard.run.main, with sys.argv, sys.path and sys.meta_path put back afterwards."""
    from imaguard import run

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    meta = list(sys.meta_path)

    def call(*args: str | os.PathLike[str]) -> int:
        return run.main([os.fspath(a) for a in args])

    try:
        yield call
    finally:
        sys.meta_path[:] = meta


def test_run_main_signed_script(
    tmp_path: Path,
    pkg: Pkg,
    ec_key: imaguard.PrivateKey,
    keys_dir: dict[str, Path],
    run_main: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import json, sys\n"
        f"import {pkg.mod('mod')} as m\n"
        "print(json.dumps({'argv': sys.argv, 'value': m.VALUE, 'name': __name__}))\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    imaguard.sign_file(script, ec_key, "sha256")
    code = run_main("--keyring", keys_dir["ecdsa-p256"], script, "3", "x y")
    assert code == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"argv": [str(script), "3", "x y"], "value": "signed", "name": "__main__"}


def test_run_main_exit_statuses(
    tmp_path: Path,
    ec_key: imaguard.PrivateKey,
    keys_dir: dict[str, Path],
    run_main: Callable[..., int],
) -> None:
    ring = keys_dir["ecdsa-p256"]
    for body, expected in (
        ("pass\n", 0),
        ("raise SystemExit\n", 0),
        ("raise SystemExit('no')\n", 1),
    ):
        script = tmp_path / f"s{expected}.py"
        script.write_text(body)
        imaguard.sign_file(script, ec_key, "sha256")
        assert run_main("--keyring", ring, script) == expected


def test_run_main_refuses_an_unsigned_script(
    tmp_path: Path,
    keys_dir: dict[str, Path],
    run_main: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = tmp_path / "unsigned.py"
    script.write_text("print('RAN')\n")
    assert run_main("--keyring", keys_dir["ecdsa-p256"], script) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"imaguard.run: imaguard refused to import {script}: no-xattr "
        "(IMA-signature-required) - no value stored for this file\n"
    )
    # Log mode runs it, and says so.
    assert run_main("--keyring", keys_dir["ecdsa-p256"], "--mode", "log", script) == 0
    assert capsys.readouterr().out == "RAN\n"


def test_run_main_bad_keyring(
    tmp_path: Path, run_main: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    assert run_main("--keyring", tmp_path / "no-ring", script) == 2
    assert capsys.readouterr().err.startswith("imaguard.run: ")
