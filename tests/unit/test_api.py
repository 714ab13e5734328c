"""The public surface: ``imaguard.__all__`` and the single error root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest

import imaguard


def _public_namespace() -> set[str]:
    # dir() rather than vars(): most names load on first use (PEP 562), and the package's
    # __dir__ lists them; getattr() resolves each one.
    names = set()
    for name in dir(imaguard):
        if name.startswith("_"):
            continue
        if not isinstance(getattr(imaguard, name), types.ModuleType):
            names.add(name)
    return names


def test_all_is_exactly_the_public_namespace() -> None:
    # As httpx's "exported members" test: nothing public is left out of __all__ and
    # __all__ names nothing that is not there. __version__ is the one dunder exported.
    assert set(imaguard.__all__) == _public_namespace() | {"__version__"}


def test_all_has_no_duplicates_and_is_sorted() -> None:
    assert len(imaguard.__all__) == len(set(imaguard.__all__))
    assert imaguard.__all__ == sorted(imaguard.__all__)


@pytest.mark.parametrize("name", imaguard.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    value = getattr(imaguard, name)
    assert value is not None
    assert not isinstance(value, types.ModuleType)


def test_star_import_gives_all() -> None:
    ns: dict[str, object] = {}
    exec("from imaguard import *", ns)  # noqa: S102 - the point of the test
    exported = {k for k in ns if k != "__builtins__"}
    assert exported == set(imaguard.__all__)


def test_version_is_a_string() -> None:
    assert isinstance(imaguard.__version__, str)
    assert imaguard.__version__.count(".") >= 1


def _exception_classes_in(module: types.ModuleType) -> list[type[BaseException]]:
    return [
        value
        for name, value in vars(module).items()
        if not name.startswith("_")
        and inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__.startswith("imaguard")
    ]


def test_every_exported_exception_derives_from_error() -> None:
    found = _exception_classes_in(imaguard)
    # The whole documented tree is exported.
    assert {c.__name__ for c in found} >= {
        "Error",
        "FormatError",
        "KeyLoadError",
        "VerificationError",
        "FileError",
        "FileChangedError",
        "StoreError",
        "UsageError",
    }
    for cls in found:
        assert issubclass(cls, imaguard.Error), cls


def test_every_public_exception_in_any_submodule_derives_from_error() -> None:
    checked = 0
    for info in pkgutil.walk_packages(imaguard.__path__, prefix="imaguard."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for cls in _exception_classes_in(module):
            assert issubclass(cls, imaguard.Error), f"{info.name}.{cls.__name__}"
            checked += 1
    assert checked >= 8


def test_error_branches() -> None:
    assert issubclass(imaguard.FileChangedError, imaguard.FileError)
    err = imaguard.FileChangedError("/x", "changed")
    assert err.path == "/x"
    assert err.reason == "changed"
    assert "/x" in str(err)
    verr = imaguard.VerificationError("bad", verdict="v")
    assert verr.verdict == "v"
    assert isinstance(verr, imaguard.Error)
