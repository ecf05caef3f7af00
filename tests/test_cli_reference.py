"""docs/cli.md is written from the click command tree by rtserve.cli.reference: it must be
what the generator writes now, and show every command, argument and option of the tree."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from rtserve.cli.main import main
from rtserve.cli.reference import DOCS, command_paths, iter_commands, render

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"


def test_cli_reference_is_written_from_the_commands() -> None:
    assert CLI_MD.read_text() == render(), "run: python -m rtserve.cli.reference"


def test_every_command_has_its_section_and_prose() -> None:
    text = CLI_MD.read_text()
    paths = command_paths()
    assert {"run", "check", "new", "token", "token mint", "token verify"} <= set(paths)
    assert set(paths) == set(DOCS), "describe each command in rtserve.cli.reference.DOCS"
    for path in paths:
        heading = f"## {' '.join(['rtserve', path]).strip()}\n"
        assert heading in text, heading


def test_every_argument_and_visible_option_is_shown() -> None:
    text = CLI_MD.read_text()
    for path, command, ctx in iter_commands(main):
        section = text.split(f"## {ctx.command_path}\n", 1)[1].split("\n## ", 1)[0]
        assert ctx.command_path in section  # the usage line
        for param in command.params:
            if isinstance(param, click.Argument):
                name = param.metavar or (param.name or "").upper()
                assert f"| `{name}` |" in section, (path, name)
            elif isinstance(param, click.Option) and not param.hidden:
                for opt in [*param.opts, *param.secondary_opts]:
                    assert f"`{opt}`" in section, (path, opt)
                if param.envvar:
                    assert f"`{param.envvar}`" in section, (path, param.envvar)


def test_the_commands_listed_are_those_rtserve_help_shows() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = result.output.split("Commands:", 1)[1].split()
    for path in command_paths():
        if path and " " not in path:
            assert path in listed, path
