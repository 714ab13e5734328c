"""Running the ``imaguard`` command in-process, shared by the CLI tests."""

from __future__ import annotations

import os

import pytest

from imaguard.cli import main


def run_in_process(
    capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]
) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr); never a traceback."""
    with pytest.raises(SystemExit) as exc:
        main([os.fspath(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out
    assert "Traceback" not in err
    code = exc.value.code
    assert isinstance(code, int)
    return code, out, err
