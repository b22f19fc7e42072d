"""``cra mcp proxy``: registered into ``cra`` through the ``cra_agents.cli`` entry point."""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
from pathlib import Path
from typing import Any

from cra_agents import ConfigurationError

__all__ = ["register"]

_EXAMPLE = """\
examples:
  cra mcp proxy --atlas ./atlas -- python my_server.py
  cra mcp proxy --atlas ./atlas --upstream http://127.0.0.1:8000/mcp
  cra mcp proxy --atlas ./atlas --map tools.json --hide-denied -- npx some-mcp-server
The proxy speaks MCP on its stdin/stdout: an MCP host starts it in the server's place.
"""


def register(commands: Any, command: Any) -> None:
    """Add ``cra mcp`` (and ``cra mcp proxy``) to the ``cra`` parser."""
    mcp = commands.add_parser("mcp", help="govern the tools of MCP servers (cra-agents-mcp)")
    mcp.set_defaults(handler=_group_help)
    group = mcp.add_subparsers(title="mcp commands", metavar="COMMAND", parser_class=type(mcp))
    p = command(
        group,
        "proxy",
        proxy,
        "serve MCP on stdio in front of upstream MCP servers; every tool call decided first",
    )
    p.epilog = _EXAMPLE
    p.add_argument("--atlas", action="append", required=True, metavar="PATH", help="atlas (repeat)")
    p.add_argument("--agent", metavar="ID", help="agent id (default: the client's name)")
    p.add_argument("--goal", metavar="TEXT", help="the sessions' goal")
    p.add_argument(
        "--map", metavar="FILE", help="JSON object: tool name -> action id, for the rest"
    )
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="URL",
        help="a streamable-HTTP upstream server (repeat)",
    )
    p.add_argument(
        "--stdio",
        action="append",
        default=[],
        metavar="COMMAND",
        help="another stdio upstream, as one shell-quoted string (repeat)",
    )
    p.add_argument(
        "--hide-denied",
        action="store_true",
        help="leave tools the atlases deny outright (or do not declare) out of tools/list",
    )
    p.add_argument(
        "--approval-handler",
        metavar="MODULE:NAME",
        help="who answers approvals for clients without elicitation (default: deny)",
    )
    p.add_argument(
        "--approval-timeout", type=float, default=300.0, metavar="S", help="seconds (300)"
    )
    p.add_argument(
        "--max-result-bytes",
        type=int,
        default=None,
        metavar="N",
        help="largest tool result forwarded, as JSON (default 4 MiB)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        metavar="N",
        help="largest message read from a stdio upstream, one line (default 16 MiB); a longer "
        "one is discarded as it is read and fails the calls in flight",
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="seconds per upstream call"
    )
    p.add_argument(
        "--durability", choices=["async", "group", "sync"], default="async", help="trace writes"
    )
    p.add_argument("--otel", metavar="ENDPOINT", help="export spans to this OTLP endpoint")
    p.add_argument(
        "--store",
        metavar="URL",
        help="trace store: sqlite://FILE, jsonl://DIR (default: CRA_AGENTS_STORE or "
        "sqlite://.cra/traces.db)",
    )
    p.add_argument(
        "upstream_command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND",
        help="the upstream server's command line (stdio)",
    )


def _group_help(args: argparse.Namespace, out: Any) -> int:
    raise ConfigurationError(
        "cra mcp: a command is required (proxy)", details={"reason": "no_command"}
    )


def proxy(args: argparse.Namespace, out: Any) -> int:
    """Run the proxy until the client closes its side (stdin)."""
    import anyio

    from cra_agents import Runtime
    from cra_agents_mcp._proxy import DEFAULT_MAX_RESULT_BYTES, MCPProxy, Upstream
    from cra_agents_mcp._stdio import DEFAULT_MAX_MESSAGE_BYTES

    command = list(args.upstream_command)
    if command and command[0] == "--":
        command = command[1:]
    upstreams = [Upstream.stdio(command)] if command else []
    upstreams += [Upstream.stdio(shlex.split(line)) for line in args.stdio]
    upstreams += [Upstream.http(url) for url in args.upstream]
    if not upstreams:
        raise ConfigurationError(
            "cra mcp proxy: no upstream server; give its command after '--', or --upstream URL",
            details={"reason": "no_upstream"},
        )
    runtime = Runtime(
        args.atlas,
        store=args.store,
        durability=args.durability,
        approval_handler=_handler(args.approval_handler),
        approval_timeout=args.approval_timeout,
        otel=args.otel,
    )
    try:
        server = MCPProxy(
            runtime,
            upstreams,
            agent_id=args.agent,
            goal=args.goal,
            actions=_tool_map(args.map),
            hide_denied=args.hide_denied,
            max_result_bytes=args.max_result_bytes or DEFAULT_MAX_RESULT_BYTES,
            max_message_bytes=args.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
            call_timeout=args.timeout,
        )
        anyio.run(server.serve_stdio)
    finally:
        runtime.close()
    return 0


def _tool_map(path: str | None) -> dict[str, str] | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--map {path}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigurationError(
            f"--map {path}: expected a JSON object of tool name -> action id strings"
        )
    return data


def _handler(spec: str | None) -> Any:
    if spec is None:
        return "auto_deny"
    module, _, name = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"--approval-handler {spec}: cannot import it ({exc}); give MODULE:NAME"
        ) from exc
    if not callable(found):
        raise ConfigurationError(f"--approval-handler {spec}: not callable")
    return found
