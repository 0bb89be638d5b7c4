"""Every CLI command answers --help (a help text that does not render is a crash)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kasou.cli.main import app


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    if hasattr(cmd, "commands"):   # a group (typer vendors its own click)
        for name, sub in cmd.commands.items():
            out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "kasou" for p in COMMANDS])
def test_help_renders(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
