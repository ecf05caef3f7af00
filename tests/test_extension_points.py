"""docs/architecture.md's "Extending rtserve" lists the files a new transport, broker or CLI
command touches; these tests hold the lists to the code: every file named exists, each list is
short, and the seams named are all the code asks of an extension."""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rtserve.broker import url as broker_url
from rtserve.broker.memory import MemoryBroker
from rtserve.server.transport import ExchangeTransport, Served

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
SECTION = "## Extending rtserve: the files each extension touches"
EXTENSIONS = ("A new transport", "A new broker", "A new CLI command")


def listed_files() -> dict[str, list[str]]:
    """Per extension, the paths its list names (first backticked path of each bullet)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    lists: dict[str, list[str]] = {}
    current = None
    for line in section.splitlines():
        for name in EXTENSIONS:
            if line.startswith(name):
                current = lists.setdefault(name, [])
        match = re.match(r"- `([^`]+)`", line)
        if match and current is not None:
            current.append(match.group(1))
    return lists


def test_each_extension_lists_a_few_files_that_exist() -> None:
    lists = listed_files()
    assert set(lists) == set(EXTENSIONS)
    for name, files in lists.items():
        assert 2 <= len(files) <= 4, (name, files)
        for file in files:
            if "<" in file:  # the new module itself: its folder exists
                assert (ROOT / file).parent.is_dir(), file
            else:
                assert (ROOT / file).exists(), file


def protocol_members(protocol: type) -> set[str]:
    """Methods, properties and annotated attributes a Protocol declares."""
    names = set(vars(protocol)) | set(getattr(protocol, "__annotations__", {}))
    return {name for name in names if not name.startswith("_")}


def test_the_exchange_asks_of_its_transport_only_what_exchange_transport_declares() -> None:
    """So an HTTP/2 stream implementing the protocol is all an Exchange needs."""
    tree = ast.parse((ROOT / "rtserve" / "server" / "exchange.py").read_text())
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "_transport"
    }
    assert used, "the exchange reaches its connection as self._transport"
    assert used <= protocol_members(ExchangeTransport), used - protocol_members(ExchangeTransport)


def test_the_server_and_stats_ask_of_a_connection_only_what_served_declares() -> None:
    members = protocol_members(Served)
    assert {"deadline", "peer", "bytes_in", "bytes_out", "describe", "abort"} <= members


def test_a_broker_is_one_module_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ext_broker_example.py").write_text(
        textwrap.dedent(
            """
            from rtserve.broker.memory import MemoryBroker

            class ExampleBroker(MemoryBroker):
                def __init__(self, url: str) -> None:
                    super().__init__()
                    self.url = url

            def from_url(url: str) -> ExampleBroker:
                return ExampleBroker(url)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ext_broker_example", raising=False)
    kinds = {
        **broker_url.BROKER_KINDS,
        "example": broker_url.BrokerKind("ext_broker_example:from_url"),
    }
    monkeypatch.setattr(broker_url, "BROKER_KINDS", kinds)
    broker_url.check_broker_url("example://anywhere")
    broker = broker_url.broker_from_url("example://anywhere")
    assert isinstance(broker, MemoryBroker) and broker.url == "example://anywhere"  # type: ignore[attr-defined]
    sys.modules.pop("ext_broker_example", None)


def test_a_cli_command_is_one_module_and_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from rtserve.cli import main as cli
    from rtserve.cli.reference import command_paths

    @click.command(short_help="Say hello (an example of a new command).")
    def hello() -> None:
        """Say hello."""
        click.echo("hello")

    commands = dict(cli.main.commands)
    monkeypatch.setattr(cli.main, "commands", commands)
    cli.main.add_command(hello)
    assert CliRunner().invoke(cli.main, ["hello"]).output == "hello\n"
    assert "hello" in command_paths()  # the reference (docs/cli.md) is made from this tree
