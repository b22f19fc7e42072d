"""`cra` commands of other distributions (entry point group ``cra_agents.cli``)."""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import Any

import pytest

from cra_agents.cli import _main
from cra_agents.cli._main import _command_name, main


def test_the_command_word() -> None:
    """The first word that is not an option of cra itself names the command."""
    assert _command_name(["--json", "-v", "mcp", "proxy"]) == "mcp"
    assert _command_name(["--store", "x"]) is None
    assert _command_name(["--json"]) is None


def test_a_missing_distribution_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cra mcp` without cra-agents-mcp: exit 2 and the pip command."""
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    assert main(["mcp", "proxy", "--atlas", "x"]) == 2
    err = capsys.readouterr().err
    assert "cra-agents-mcp" in err and "pip install cra-agents-mcp" in err


def test_an_unknown_command_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A word no built-in or entry point has: argparse's own error, exit 2."""
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    assert main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


class _EntryPoint:
    name = "hello"

    def load(self) -> Any:
        def register(commands: Any, command: Any) -> None:
            def hello(args: argparse.Namespace, out: Any) -> int:
                print(f"hello {args.who}")
                return 0

            command(commands, "hello", hello, "say hello").add_argument("who")

        return register


def test_an_entry_point_adds_its_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The entry point named after the command registers it through the command helper."""
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda **kw: [_EntryPoint()] if kw.get("group") == _main.PLUGIN_GROUP else [],
    )
    assert main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"
