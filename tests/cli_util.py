"""Helpers of the CLI tests: a refusal is one line, exit 1, before any loader ran (with the
``no_loading`` fixture of ``conftest.py``)."""
from __future__ import annotations

import pytest

from cogvideox_core.cli.main import main as cli_main


def refused(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI on ``argv``; it must fail with one ``error: ...`` line (returned)."""
    capsys.readouterr()  # drop what fixtures printed
    code = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.startswith("error: ") and "\n" not in err and "loader was called" not in err, err
    return err
