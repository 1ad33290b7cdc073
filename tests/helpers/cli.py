"""The CLI run in-process as click runs it, and the one error line a user must see."""

from __future__ import annotations

from click.testing import CliRunner, Result


def run_cli(*args) -> Result:
    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(r: Result, code: int = 1) -> str:
    """The text of the last line, ``Error: TEXT``, after checking the exit code and that no
    traceback was printed."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and "Aborted" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error: "), r.output
    return lines[-1][len("Error: "):]
