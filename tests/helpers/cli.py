"""Running ``cli.py`` in-process and reading its one-line errors."""

from __future__ import annotations

from click.testing import CliRunner, Result


def run_cli(*args: object) -> Result:
    """``cli.py ARGS`` through click's runner (paths and numbers given as they are)."""
    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(r: Result) -> str:
    """The one ``Error: ...`` line a failed command ended with (exit code 1, no traceback)."""
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: "), r.output
    return lines[-1][len("Error: "):]
