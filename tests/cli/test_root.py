"""The root of the command line: the lazy verb table, start-up imports, the exit funnel."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from helpers.clirun import run_in_process
from imaguard.cli import _root

Capsys = pytest.CaptureFixture[str]


def test_every_verb_in_the_table_loads_and_its_summary_is_its_docstring() -> None:
    ctx = click.Context(_root.cli)
    for name, verb in _root.COMMANDS.items():
        cmd = _root.cli.get_command(ctx, name)
        assert isinstance(cmd, click.Command), name
        if not verb.hidden:
            assert cmd.help is not None
            assert cmd.help.split("\n\n")[0].strip() == verb.summary, name


def test_help_lists_verbs_without_importing_them() -> None:
    code = (
        "import sys\n"
        "from imaguard.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('imaguard.cli._'))\n"
        "print(loaded, file=sys.stderr)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    for verb in ("sign", "verify", "policy", "check", "measure", "log", "evm", "keys"):
        assert f"\n  {verb} " in r.stdout
    loaded = r.stderr.strip()
    for module in ("_files", "_policy", "_check", "_log", "_evm", "_keys"):
        assert f"imaguard.cli.{module}'" not in loaded


def _boom(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("an unexpected bug")


@pytest.mark.parametrize(
    ("flags", "traceback_shown"), [((), False), (("-v",), True), (("--debug",), True)]
)
def test_an_unexpected_error_is_one_line_unless_verbose(
    capsys: Capsys,
    monkeypatch: pytest.MonkeyPatch,
    flags: tuple[str, ...],
    traceback_shown: bool,
) -> None:
    import imaguard.cli._files as files

    monkeypatch.setattr(files, "resolve_store", _boom)
    with pytest.raises(SystemExit) as exc:
        _root.main([*flags, "show", "/nonexistent"])
    _out, err = capsys.readouterr()
    assert exc.value.code == 2
    assert "internal error: RuntimeError: an unexpected bug" in err
    assert ("Traceback (most recent call last)" in err) is traceback_shown
    if not traceback_shown:
        assert len(err.strip().splitlines()) == 1
        assert "--debug" in err


def test_unknown_verb_is_a_usage_error(capsys: Capsys) -> None:
    code, _out, err = run_in_process(capsys, "no-such-verb")
    assert code == 2
    assert "no-such-verb" in err
