"""``cra``: resolve, validate atlases, verify and inspect traces, check the installation.

Exit codes (the same for every command):

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success: valid, allowed, identical, all checks passed
1     the check ran and failed: invalid atlas or chain, a resolution that denies,
      traces that differ, changed replay decisions (with ``--fail-on-change``),
      failed conformance cases, a failed doctor check
2     usage or input error: bad arguments, a file or session that does not exist,
      unreadable input (the message says what to do)
3     internal error: a bug in cra-agents (please report it with the output)
130   interrupted (Ctrl-C)
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cra_agents._exceptions import CRAError, MissingDependencyError
from cra_agents._version import __version__
from cra_agents.cli._output import CLIError, Output

__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
#: Alias kept for readers of the table above.
EXIT_ERROR = EXIT_USAGE

Handler = Callable[[argparse.Namespace, Output], int]

_EPILOG = """\
exit codes: 0 success · 1 check failed (invalid, denied, different) · 2 usage or input error
            3 internal error · 130 interrupted
stores: --store URL or CRA_AGENTS_STORE (default sqlite://.cra/traces.db): sqlite://FILE,
        jsonl://DIR or postgresql://USER:PASSWORD@HOST:PORT/DATABASE (the postgres extra);
        memory:// is not readable from another process. SESSION may be a session id, a
        unique prefix of one, 'last' (the newest session) or a .trace.jsonl file.
docs: README.md, section "The cra command" (the package's description on its index page)
"""


class _Parser(argparse.ArgumentParser):
    """argparse with our error format and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(
            "usage",
            f"{self.prog}: {message}",
            f"run '{self.prog} --help' for the arguments",
        )


def _common() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="write one JSON document to stdout instead of text",
    )
    common.add_argument(
        "--no-color",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no colour even on a terminal (NO_COLOR works too)",
    )
    return common


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help="trace store: sqlite://FILE, jsonl://DIR, postgresql://HOST/DATABASE (default: "
        "CRA_AGENTS_STORE or sqlite://.cra/traces.db)",
    )


#: The entry point group through which other distributions add ``cra`` commands: each entry
#: point is named after its command and is a function ``register(commands, command)`` that
#: adds it (``commands``: the subparsers; ``command(group, name, handler, help)``: the helper
#: that adds one subcommand with the common options). Loaded only when its command runs.
PLUGIN_GROUP = "cra_agents.cli"
#: Commands of distributions we know, and the distribution to install for each.
_PLUGINS = {"mcp": "cra-agents-mcp"}
#: Options of ``cra`` itself that take no value (anything else first is the command).
_GLOBAL_FLAGS = frozenset({"--json", "--no-color", "-v", "--verbose", "-h", "--help", "--version"})


def _command_name(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs (its first word that is not an option of ``cra``)."""
    for word in argv:
        if word not in _GLOBAL_FLAGS:
            return None if word.startswith("-") else word
    return None


def _add_plugin(commands: Any, command: Any, name: str) -> None:
    """Add the command ``name`` from the distribution that provides it (entry points)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=PLUGIN_GROUP) if ep.name == name]
    if not found:
        dist = _PLUGINS.get(name)
        if dist is not None:
            raise CLIError(
                "missing_dependency",
                f"'cra {name}' is a command of the {dist} distribution, which is not installed",
                f"pip install {dist}",
            )
        return  # argparse reports an unknown command
    register = found[0].load()
    register(commands, command)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole ``cra`` argument parser (the command modules are imported when one runs).

    A command no built-in has (``cra mcp``) is looked up in the ``cra_agents.cli`` entry
    points of the installed distributions, by the command word of ``argv``.
    """
    _atlas, _misc, _trace = _Commands("_atlas"), _Commands("_misc"), _Commands("_trace")
    _ingest = _Commands("_ingest")
    common = _common()
    parser = _Parser(
        prog="cra",
        description="Governed, provable tool calls for AI agents: resolve, check atlases, "
        "verify and inspect TRACE audit logs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"cra-agents {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    # No defaults for --json/--no-color here: the actions are shared with every subcommand
    # (argparse parents), and a default would let the subcommand reset a global --json.
    parser.set_defaults(handler=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    def command(
        group: argparse._SubParsersAction[_Parser],
        name: str,
        handler: Handler,
        help_text: str,
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    # -- resolve --
    p = command(commands, "resolve", _misc.resolve, "resolve a goal against atlases (CARP)")
    p.add_argument("--atlas", action="append", required=True, metavar="PATH", help="atlas (repeat)")
    p.add_argument("--goal", required=True, metavar="TEXT", help="what the agent wants to do")
    p.add_argument("--agent", default="cli", metavar="ID", help="agent id (default: cli)")
    p.add_argument(
        "--risk", default="low", choices=["low", "medium", "high", "critical"], help="risk tier"
    )
    p.add_argument("--hint", action="append", default=[], metavar="H", help="context hint")
    p.add_argument(
        "--capability", action="append", default=[], metavar="C", help="required capability"
    )

    # -- atlas --
    atlas = commands.add_parser(
        "atlas", help="validate, lint, scaffold, convert and show atlases", parents=[common]
    )
    atlas.set_defaults(handler=_group_help(atlas))
    group = atlas.add_subparsers(title="atlas commands", metavar="COMMAND", parser_class=_Parser)
    p = command(group, "validate", _atlas.validate, "validate atlases (exit 1 on errors)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="atlas directory or manifest")
    p.add_argument(
        "--strict",
        action="store_true",
        help="check against the Atlas 1.0 schema (default: what the loader accepts)",
    )
    p = command(group, "lint", _atlas.lint, "find unsafe or weak spots in atlases")
    p.add_argument("paths", nargs="+", metavar="PATH", help="atlas directory or manifest")
    p.add_argument(
        "--fail-on", choices=["error", "warning"], default="error", help="exit 1 from this level"
    )
    p = command(group, "init", _atlas.init, "scaffold an atlas, or copy a shipped example")
    p.add_argument("name", metavar="NAME", help="directory to create; its name names the atlas")
    p.add_argument("--id", dest="atlas_id", metavar="ATLAS_ID", help="atlas id (reverse DNS)")
    p.add_argument("--force", action="store_true", help="write into an existing directory")
    p.add_argument(
        "--example",
        metavar="EXAMPLE",
        help="copy a shipped example atlas instead of the scaffold (github-ops)",
    )
    p = command(group, "convert", _atlas.convert, "convert legacy Atlas 0.1 to Atlas 1.0")
    p.add_argument("paths", nargs="+", metavar="PATH", help="legacy atlas directory or file")
    p.add_argument(
        "-o", "--output", metavar="DIR", help="where to write (default: PATH-1.0 beside it)"
    )
    p.add_argument("--force", action="store_true", help="overwrite the output directory")
    p = command(group, "show", _atlas.show, "summarise an atlas: actions, policies, context")
    p.add_argument("path", metavar="PATH", help="atlas directory or manifest")

    # -- trace --
    trace = commands.add_parser(
        "trace", help="verify, inspect, replay, diff, export and report traces", parents=[common]
    )
    trace.set_defaults(handler=_group_help(trace))
    group = trace.add_subparsers(title="trace commands", metavar="COMMAND", parser_class=_Parser)
    p = command(group, "verify", _trace.verify, "verify hash chains (exit 1 when invalid)")
    p.add_argument("targets", nargs="*", metavar="PATH|SESSION", help="trace files or sessions")
    p.add_argument("--all", action="store_true", help="every session in the store")
    p.add_argument("--checkpoint", metavar="F", help="checkpoint file or directory")
    p.add_argument("--pubkey", metavar="K", help="PEM public key the checkpoints are signed with")
    p.add_argument(
        "--from-otlp", metavar="FILE", help="also check the links in exported OTLP/JSON spans"
    )
    _store_option(p)
    p = command(group, "show", _trace.show, "a session as a tree of decisions and actions")
    p.add_argument("target", metavar="PATH|SESSION")
    p.add_argument(
        "--max-calls",
        type=int,
        default=200,
        metavar="N",
        help="list every call that was not simply allowed, allowed ones up to N in all "
        "(default 200; 0: all)",
    )
    _store_option(p)
    p = command(group, "list", _trace.list_sessions, "sessions in the store, newest last")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20, 0 all)")
    _store_option(p)
    p = command(group, "tail", _trace.tail, "the latest events; -f follows new ones")
    p.add_argument("target", nargs="?", metavar="PATH|SESSION", help="one session (default all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--type", dest="types", action="append", metavar="T", help="event type")
    p.add_argument("-n", "--lines", type=int, default=20, help="events to show first (20)")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=None, help=argparse.SUPPRESS)
    _store_option(p)
    p = command(group, "replay", _trace.replay, "which decisions a candidate atlas would change")
    p.add_argument("target", metavar="PATH|SESSION")
    p.add_argument(
        "--atlas", action="append", required=True, metavar="CANDIDATE", help="atlas (repeat)"
    )
    p.add_argument("--default-deny", action="store_true", help="replay with default deny")
    p.add_argument("--fail-on-change", action="store_true", help="exit 1 when a decision changes")
    _store_option(p)
    p = command(group, "diff", _trace.diff, "compare two traces (exit 1 when they differ)")
    p.add_argument("first", metavar="A")
    p.add_argument("second", metavar="B")
    _store_option(p)
    p = command(group, "export", _trace.export, "export sessions as JSONL or OTLP/JSON spans")
    p.add_argument("targets", nargs="*", metavar="PATH|SESSION")
    p.add_argument("--all", action="store_true", help="every session in the store")
    p.add_argument("--format", choices=["jsonl", "otlp"], default="jsonl")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")
    p.add_argument("--service-name", default="cra-agents", help="OTLP resource service.name")
    _store_option(p)
    p = command(group, "report", _trace.report, "a self-contained HTML report of a session")
    p.add_argument("target", metavar="PATH|SESSION")
    p.add_argument("-o", "--output", metavar="FILE", help="default: report-<session>.html")
    p.add_argument("--checkpoint", metavar="F", help="checkpoint file or directory")
    p.add_argument("--pubkey", metavar="K", help="PEM public key the checkpoints are signed with")
    p.add_argument("--title", help="page title")
    _store_option(p)
    p = command(group, "keygen", _trace.keygen, "make an Ed25519 key pair for checkpoints")
    p.add_argument("prefix", metavar="PREFIX", help="writes PREFIX.key (0600) and PREFIX.pub")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p = command(group, "checkpoint", _trace.checkpoint, "sign a checkpoint of a session")
    p.add_argument("target", metavar="PATH|SESSION")
    p.add_argument("--key", required=True, metavar="KEY", help="PEM private key (cra trace keygen)")
    p.add_argument(
        "-o", "--output", default=".cra/checkpoints", metavar="DIR", help="checkpoint directory"
    )
    _store_option(p)

    # -- conformance, doctor, serve --
    p = command(commands, "conformance", _misc.conformance, "run the upstream conformance suite")
    p.add_argument(
        "--suite",
        metavar="DIR",
        help="the suite: upstream CRA's specs/ folder or a folder with schemas/ and golden/ "
        "(default: $CRA_CONFORMANCE_DIR, else ../shared/conformance)",
    )
    p = command(commands, "doctor", _misc.doctor, "check the installation, store and collector")
    p.add_argument("--collector", metavar="URL", help="OTLP endpoint to probe")
    _store_option(p)
    p = command(commands, "serve", _misc.serve, "run the CRA HTTP server (CRA Runtime API)")
    p.add_argument(
        "--atlas",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="atlas to load (repeatable; default: the config file's atlases)",
    )
    p.add_argument("--host", help="interface (default 127.0.0.1, or CRA_HOST / config)")
    p.add_argument("--port", type=int, help="TCP port (default 8420, or CRA_PORT / config)")
    p.add_argument(
        "--config", metavar="FILE", help="server configuration: .toml, .json or .yaml (CRA_CONFIG)"
    )
    _store_option(p)

    # -- ingest --
    ingest = commands.add_parser(
        "ingest", help="run an ingest server, or send trace files to one", parents=[common]
    )
    ingest.set_defaults(handler=_group_help(ingest))
    group = ingest.add_subparsers(title="ingest commands", metavar="COMMAND", parser_class=_Parser)
    p = command(
        group, "serve", _ingest.serve, "run an ingest server (POST /v1/ingest/batch), no atlas"
    )
    p.add_argument("--host", help="interface (default 127.0.0.1, or CRA_HOST / config)")
    p.add_argument("--port", type=int, help="TCP port (default 8420, or CRA_PORT / config)")
    p.add_argument(
        "--config", metavar="FILE", help="server configuration: .toml, .json or .yaml (CRA_CONFIG)"
    )
    _store_option(p)
    p = command(group, "send", _ingest.send, "send JSONL trace files to an ingest server")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL trace files, sent in order")
    p.add_argument("--url", metavar="URL", help="the ingest server (default CRA_INGEST_URL)")
    p.add_argument(
        "--batch", type=int, default=2000, metavar="N", help="events per batch (default 2000)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)

    # -- commands of other distributions (cra mcp: cra-agents-mcp) --
    name = _command_name(argv)
    if name is not None and name not in commands.choices:
        _add_plugin(commands, command, name)
    return parser


class _Commands:
    """A command module by name: ``_Commands("_trace").verify`` imports it when run."""

    def __init__(self, module: str) -> None:
        self.module = f"cra_agents.cli.{module}"

    def __getattr__(self, name: str) -> Handler:
        def handler(args: argparse.Namespace, out: Output) -> int:
            run: Handler = getattr(importlib.import_module(self.module), name)
            return run(args, out)

        return handler


def _group_help(parser: argparse.ArgumentParser) -> Handler:
    def handler(args: argparse.Namespace, out: Output) -> int:
        raise CLIError(
            "usage",
            f"{parser.prog}: a command is required",
            f"run '{parser.prog} --help' to list them",
        )

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cra`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    raw = list(sys.argv[1:] if argv is None else argv)
    wants_json = "--json" in raw
    out = Output(json_mode=wants_json, color=False if "--no-color" in raw else None)
    try:
        parser = build_parser(raw)
        try:
            args = parser.parse_args(raw)
        except SystemExit as exc:  # --help, --version
            return int(exc.code or 0)
        wants_json = getattr(args, "json", False)
        out = Output(
            json_mode=wants_json, color=False if getattr(args, "no_color", False) else None
        )
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        if args.handler is None:
            parser.print_help(out.stdout)
            return EXIT_USAGE
        handler: Handler = args.handler
        return handler(args, out)
    except CLIError as exc:
        out.error(exc)
        return exc.exit_code
    except CRAError as exc:
        out.error(CLIError(exc.code, str(exc), _hint_for(exc)))
        return EXIT_USAGE
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        out.error(
            CLIError(
                "io_error",
                f"{exc.strerror or exc}{where}",
                "check that the path exists, is the kind expected (file or directory) and "
                "is writable",
            )
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        out.error(CLIError("interrupted", "interrupted", "", exit_code=EXIT_INTERRUPTED))
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # pragma: no cover - `cra ... | head`
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a command
        out.error(
            CLIError(
                "internal",
                f"{type(exc).__name__}: {exc}",
                "this is a bug in cra-agents; run again with -v and report the output",
            )
        )
        return EXIT_INTERNAL


def _hint_for(exc: CRAError) -> str:
    if isinstance(exc, MissingDependencyError):
        return f"install the '{exc.extra}' extra: {exc.install_hint}"
    hints = {
        "ATLAS_NOT_FOUND": "check the path; an atlas is a directory with atlas.json or a manifest",
        "INVALID_ATLAS_MANIFEST": "run 'cra atlas validate PATH' to see every finding",
        "ATLAS_LOAD_ERROR": "run 'cra atlas validate PATH' to see every finding",
        "ATLAS_ALREADY_LOADED": "pass atlases whose ids and action ids do not overlap",
        "INVALID_TRACE_EVENT": "run 'cra trace verify' on the trace to locate the bad event",
        "TRACE_INDEX_MISMATCH": "the store was changed outside cra-agents: treat it as "
        "tampering and run 'cra trace verify --all' to see which sessions",
    }
    return hints.get(exc.code, "see the message above; -v shows debug logs")
