"""Every subpackage's ``__all__`` is tested as the top level's is (tests/unit/test_api.py):
each name resolves, nothing private is exported, nothing public is left out, and every
``imaguard.…`` name the README (and docs/) tells users to use exists."""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path

import pytest

SUBPACKAGES = (
    "imaguard.formats",
    "imaguard.crypto",
    "imaguard.appraise",
    "imaguard.policy",
    "imaguard.measure",
    "imaguard.attest",
    "imaguard.core",
    "imaguard.enforce",
    "imaguard.service",
    "imaguard.loaders",
    "imaguard.digestlists",
)
ROOT = Path(__file__).resolve().parents[2]


def _package(name: str) -> types.ModuleType:
    return importlib.import_module(name)


def _public_namespace(pkg: types.ModuleType) -> set[str]:
    # dir() rather than vars(): names may load on first use (PEP 562). Submodules are not
    # API names (the format modules of imaguard.formats are reached as modules).
    return {
        name
        for name in dir(pkg)
        if not name.startswith("_") and not isinstance(getattr(pkg, name), types.ModuleType)
    }


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_all_is_exactly_the_public_namespace(name: str) -> None:
    pkg = _package(name)
    assert set(pkg.__all__) == _public_namespace(pkg)


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_all_has_no_private_names_and_no_duplicates(name: str) -> None:
    # (The order is ruff's RUF022, checked by `ruff check`.)
    exported = _package(name).__all__
    assert [n for n in exported if n.startswith("_")] == []
    assert len(exported) == len(set(exported))


@pytest.mark.parametrize(
    ("package", "attr"),
    [(p, a) for p in SUBPACKAGES for a in importlib.import_module(p).__all__],
)
def test_every_exported_name_is_importable(package: str, attr: str) -> None:
    ns: dict[str, object] = {}
    exec(f"from {package} import {attr}", ns)  # noqa: S102 - the import is the test
    value = ns[attr]
    assert value is not None
    assert not isinstance(value, types.ModuleType)


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_star_import_gives_all(name: str) -> None:
    ns: dict[str, object] = {}
    exec(f"from {name} import *", ns)  # noqa: S102 - the point of the test
    assert {k for k in ns if k != "__builtins__"} == set(_package(name).__all__)


# Layers docs/architecture.md names as planned (not built yet).
PLANNED: frozenset[str] = frozenset()
# File names, not Python names (`imaguard.toml`, the daemon's configuration).
FILE_NAMES = frozenset({"imaguard.toml"})


def _documented_names() -> list[str]:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found: set[str] = set()
    for path in texts:
        if not path.exists():
            continue
        text = path.read_text()
        # not a file name such as /etc/imaguard/imaguard.toml
        found.update(re.findall(r"(?<![/\w.-])imaguard(?:\.[A-Za-z_]\w*)+", text))
        for module, names in re.findall(r"from (imaguard(?:\.\w+)*) import ([\w, ]+)", text):
            found.update(f"{module}.{n.strip()}" for n in names.split(",") if n.strip())
    return sorted(found - PLANNED - FILE_NAMES)


def test_the_readme_names_something() -> None:
    assert "imaguard.policy.PolicySet" in _documented_names()


@pytest.mark.parametrize("dotted", _documented_names())
def test_every_name_the_docs_use_exists_and_is_public(dotted: str) -> None:
    parts = dotted.split(".")
    obj: object = importlib.import_module("imaguard")
    for i, part in enumerate(parts[1:], start=1):
        assert not part.startswith("_"), f"{dotted}: the docs point at a private name"
        if isinstance(obj, types.ModuleType) and part not in getattr(obj, "__all__", ()):
            # A subpackage is reached as a module; anything else must be exported.
            sub = ".".join(parts[: i + 1])
            try:
                obj = importlib.import_module(sub)
                continue
            except ModuleNotFoundError:
                pytest.fail(f"{dotted}: {part} is not in {'.'.join(parts[:i])}.__all__")
        obj = getattr(obj, part)


def test_one_name_per_table() -> None:
    # The action kinds and the template table each exist once (policy.ACTION_KINDS,
    # formats.template.TEMPLATES); the old copies are gone.
    from imaguard.core import _decision
    from imaguard.formats.template import TEMPLATES
    from imaguard.policy import ACTION_KINDS, _ast

    assert not hasattr(_decision, "ACTIONS")
    assert not hasattr(_ast, "TEMPLATES")
    assert ACTION_KINDS == ("measure", "appraise", "audit", "hash")
    assert TEMPLATES["ima-sig"] == ("d-ng", "n-ng", "sig")


@pytest.mark.parametrize(
    ("package", "attr"),
    [
        (p, a)
        for p in ("imaguard", *SUBPACKAGES)
        for a in importlib.import_module(p).__all__
        if isinstance(getattr(importlib.import_module(p), a), type)
        or inspect.isfunction(getattr(importlib.import_module(p), a))
    ],
)
def test_every_exported_class_and_function_is_documented(package: str, attr: str) -> None:
    obj = getattr(importlib.import_module(package), attr)
    doc = (obj.__doc__ or "").strip()
    assert doc, f"{package}.{attr} has no docstring"
    assert not doc.startswith(f"{attr}("), f"{package}.{attr}: only the dataclass signature"
    if isinstance(obj, type) and len(obj.__mro__) > 1:
        assert doc != (obj.__mro__[1].__doc__ or "").strip(), f"{package}.{attr}: inherited"


def test_the_lock_levels_are_documented() -> None:
    from imaguard.policy import Lock, PolicySet

    source = inspect.getsource(Lock)
    for level in Lock:
        # Each member is followed by its own docstring in the class body.
        assert re.search(rf'{level.name} = "{level.value}"\n    """', source), level
    assert "signed-only" in (PolicySet.__doc__ or "") or "Lock" in (PolicySet.__doc__ or "")
