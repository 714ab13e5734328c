"""The Enforcer against the real kernel: exec and open appraisal on a private tmpfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.enforce.conftest import copy_true, enforcer, exec_result, refused_eperm, run, sign

pytestmark = pytest.mark.root


@pytest.fixture
def env(tmpfs: Path, signer, tmp_path: Path):  # type: ignore[no-untyped-def]
    key, cert = signer
    good = copy_true(tmpfs / "good")
    sign(good, key)
    bad = copy_true(tmpfs / "bad")
    return tmpfs, key, cert, tmp_path, good, bad


def test_signed_runs_unsigned_is_eperm(env) -> None:  # type: ignore[no-untyped-def]
    mnt, _key, cert, tmp, good, bad = env
    with enforcer(mnt, cert, tmp):
        assert exec_result([str(good)]).returncode == 0
        assert refused_eperm(exec_result([str(bad)]))
        assert run(["/bin/true"]).returncode == 0
