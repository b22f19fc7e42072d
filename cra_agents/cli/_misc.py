"""``cra resolve``, ``cra conformance``, ``cra doctor`` and ``cra serve``."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from cra_agents._version import __version__
from cra_agents.cli._output import CLIError, Output
from cra_agents.cli._output import esc as _esc
from cra_agents.cli._sources import StoreRef

if TYPE_CHECKING:
    from cra_agents import Runtime
    from cra_agents.server import ServerConfig

__all__ = [
    "Check",
    "conformance",
    "doctor",
    "resolve",
    "run_server",
    "serve",
    "server_config_class",
]


# -- resolve ------------------------------------------------------------------------------------


def resolve(args: argparse.Namespace, out: Output) -> int:
    """Resolve a goal against atlases in a throwaway in-memory runtime; exit 1 on deny."""
    import cra_agents as cra

    for path in args.atlas:
        if "://" not in path and not Path(path).exists():
            raise CLIError(
                "atlas_not_found",
                f"there is no atlas at {path}",
                "pass an atlas directory (with atlas.json) or a manifest file to --atlas",
            )
    runtime = cra.Runtime(atlases=args.atlas, store="memory://")
    try:
        session = runtime.create_session(args.agent, args.goal)
        resolution = runtime.resolve(
            cra.resolve_request(
                session,
                args.goal,
                risk_tier=args.risk,
                context_hints=args.hint,
                required_capabilities=args.capability,
            )
        )
    finally:
        runtime.close()
    code = 1 if resolution.decision.type == "deny" else 0
    if out.json_mode:
        out.json(resolution.model_dump(mode="json"))  # the wire form, as the golden cases
        return code
    decision = resolution.decision
    out.print(
        f"decision {out.styled(decision.type, decision.type.upper())}"
        + (f" — {_esc(decision.reason)}" if decision.reason else "")
        + f"  [dim]agent {_esc(args.agent)}, risk {args.risk}, "
        f"resolution {resolution.resolution_id}[/]"
    )
    rows: list[tuple[str, ...]] = [
        (
            _esc(a.action_id),
            out.styled("requires_approval", "needs approval")
            if a.requires_confirmation
            else out.styled("allowed"),
            _esc(a.risk_tier),
            f"{a.rate_limit.max_calls}/{a.rate_limit.window_seconds}s" if a.rate_limit else "",
        )
        for a in resolution.allowed_actions
    ]
    rows += [
        (_esc(d.action_id), out.styled("denied"), "", _esc(f"{d.policy_id}: {d.reason}"))
        for d in resolution.denied_actions
    ]
    out.print(
        out.table(
            ["action", "outcome", "risk", "limit / reason"], rows, title="actions", markup=True
        )
    )
    if resolution.context_blocks:
        out.print(
            out.table(
                ["priority", "block", "name", "tokens"],
                [
                    (str(b.priority), b.block_id, b.name, f"~{b.token_estimate}")
                    for b in resolution.context_blocks
                ],
                title="context injected (priority order)",
            )
        )
    return code


# -- conformance --------------------------------------------------------------------------------


def conformance(args: argparse.Namespace, out: Output) -> int:
    """The upstream conformance run; the harness JSON with ``--json``."""
    from cra_agents.conformance import SuiteNotFoundError, run_conformance

    try:
        report = run_conformance(args.suite)
    except SuiteNotFoundError as exc:
        raise CLIError("suite_not_found", str(exc).partition("\n")[0], exc.hint) from exc
    run = report["test_run"]
    if out.json_mode:
        out.json(report)
    else:
        rows = []
        for result in report["results"]:
            extra = result.get("error") or (result.get("details") or {}).get("reason", "")
            status = {"passed": "pass", "failed": "fail", "skipped": "warn"}[result["status"]]
            rows.append(
                (
                    out.styled(status, result["status"].upper()),
                    _esc(result["test_id"]),
                    f"{result['duration_ms']:.1f}",
                    _esc(str(extra)) if result["status"] != "passed" else "",
                )
            )
        out.print(out.table(["status", "case", "ms", "detail"], rows, markup=True))
        out.line(
            f"{report['conformance_level']}: {run['passed']} passed, {run['failed']} failed, "
            f"{run['skipped']} skipped in {run['duration_ms']:.0f} ms"
        )
    return 1 if run["failed"] else 0


# -- doctor -------------------------------------------------------------------------------------

Status = Literal["pass", "warn", "fail", "skip"]


@dataclass(frozen=True, slots=True)
class Check:
    """One doctor check: what it found and, unless it passed, how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


_EXTRAS: list[tuple[str, list[str], str]] = [
    (
        "otel",
        ["opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"],
        "pip install 'cra-agents[otel]' to export spans to a collector",
    ),
    (
        "otel-grpc",
        ["opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc"],
        "pip install 'cra-agents[otel-grpc]' to export spans over OTLP/gRPC",
    ),
    ("yaml", ["pyyaml"], "pip install 'cra-agents[yaml]' to read YAML atlases"),
    (
        "signing",
        ["cryptography"],
        "pip install 'cra-agents[signing]' to sign and check trace checkpoints",
    ),
    ("cli", ["rich"], "pip install 'cra-agents[cli]' for colour and tables in cra"),
    ("notebook", ["ipywidgets"], "pip install 'cra-agents[notebook]' for approval widgets"),
    ("langchain", ["cra-agents-langchain"], "pip install cra-agents-langchain for LangChain"),
]


def _check_versions() -> list[Check]:
    checks = [
        Check(
            "python",
            "pass" if sys.version_info >= (3, 11) else "fail",
            f"{platform.python_implementation()} {platform.python_version()} on "
            f"{platform.system()} {platform.machine()}",
            "" if sys.version_info >= (3, 11) else "install Python 3.11 or newer",
        ),
        Check("cra-agents", "pass", __version__),
    ]
    core = ["pydantic", "orjson", "jsonschema", "fastjsonschema"]
    versions = {name: _version(name) for name in core}
    missing = [name for name, v in versions.items() if v is None]
    checks.append(
        Check(
            "dependencies",
            "fail" if missing else "pass",
            ", ".join(f"{n} {v}" for n, v in versions.items() if v),
            f"reinstall cra-agents; missing: {', '.join(missing)}" if missing else "",
        )
    )
    for extra, distributions, fix in _EXTRAS:
        found = {d: _version(d) for d in distributions}
        if all(found.values()):
            checks.append(
                Check(f"extra {extra}", "pass", ", ".join(f"{d} {v}" for d, v in found.items()))
            )
        else:
            checks.append(Check(f"extra {extra}", "skip", "not installed", fix))
    return checks


def _store_path(url: str) -> tuple[str, Path | None]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("sqlite", "jsonl") or not rest:
        return scheme, None
    return scheme, Path(rest)


def _check_store(store: StoreRef) -> tuple[list[Check], str | None]:
    url = store.label
    scheme, path = _store_path(url)
    latest: str | None = None
    checks: list[Check] = []
    if scheme in ("postgresql", "postgres"):
        try:
            sessions = store.sessions()
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            return [
                Check(
                    "trace store",
                    "fail",
                    f"{url}: {type(exc).__name__}: {exc}",
                    "check that the server runs and the URL's host, database and credentials",
                )
            ], None
        finally:
            store.close()
        return [Check("trace store", "pass", f"{url}: {len(sessions)} sessions")], None
    if path is None:
        return [
            Check(
                "trace store",
                "fail",
                f"{url} is not a store this command can read",
                "use sqlite://FILE, jsonl://DIR or postgresql://HOST/DATABASE in --store or "
                "CRA_AGENTS_STORE",
            )
        ], None
    if not path.exists():
        checks.append(
            Check(
                "trace store",
                "warn",
                f"{url} does not exist yet (the runtime creates it on first use)",
                "run an agent once, or pass --store URL of an existing store",
            )
        )
    else:
        try:
            sessions = store.sessions()
            if sessions:
                events = store.open().read(sessions[-1])
                latest = events[-1].timestamp if events else None
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            checks.append(
                Check(
                    "trace store",
                    "fail",
                    f"{url}: {type(exc).__name__}: {exc}",
                    "check the file's permissions and that it is a cra-agents store; "
                    "'cra trace verify --all' locates damage",
                )
            )
        else:
            checks.append(Check("trace store", "pass", f"{url}: {len(sessions)} sessions"))
        finally:
            store.close()
    directory = path.parent if scheme == "sqlite" else path
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".cra-doctor-"):
            pass
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        checks.append(
            Check(
                "trace directory",
                "fail",
                f"{directory} is not writable: {exc}",
                "fix the directory's permissions or point the store elsewhere",
            )
        )
    else:
        gib = free / 2**30
        status: Status = "pass" if gib >= 1 else "warn" if gib >= 0.1 else "fail"
        checks.append(
            Check(
                "trace directory",
                status,
                f"{directory} writable, {gib:.1f} GiB free",
                "" if status == "pass" else "free disk space: the trace writer fails closed",
            )
        )
    return checks, latest


def _collector_url(explicit: str | None) -> str | None:
    return (
        explicit
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _check_collector(url: str | None) -> tuple[Check, float | None]:
    """Whether the collector accepts connections; and its clock skew if it says the time."""
    if not url:
        return Check(
            "collector",
            "skip",
            "no collector configured",
            "pass --collector URL or set OTEL_EXPORTER_OTLP_ENDPOINT to check it",
        ), None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (4317 if parts.scheme == "grpc" else 4318)
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except OSError as exc:
        return Check(
            "collector",
            "fail",
            f"{host}:{port} does not accept connections ({exc})",
            "start the collector (see integrations/otel-collector) or fix the endpoint; "
            "spans are dropped meanwhile, calls still run",
        ), None
    connect_ms = (time.perf_counter() - started) * 1000
    skew: float | None = None
    if parts.scheme in ("http", "https"):
        import httpx

        try:
            response = httpx.get(f"{parts.scheme}://{host}:{port}/", timeout=2.0)
            date = response.headers.get("date")
            if date:
                skew = time.time() - parsedate_to_datetime(date).timestamp()
        except (httpx.HTTPError, ValueError, TypeError):
            skew = None
    return Check("collector", "pass", f"{host}:{port} reachable in {connect_ms:.1f} ms"), skew


def _check_clock(collector_skew: float | None, latest_event: str | None) -> Check:
    from cra_agents._clock import parse_timestamp_ns

    notes = []
    status: Status = "skip"
    if collector_skew is not None:
        status = "pass" if abs(collector_skew) < 5 else "warn"
        notes.append(f"{collector_skew:+.1f} s against the collector's Date header")
    if latest_event is not None:
        ahead = parse_timestamp_ns(latest_event) / 1e9 - time.time()
        if ahead > 5:
            status = "fail"
            notes.append(f"the newest stored event is {ahead:.0f} s in the future")
        else:
            status = "pass" if status != "warn" else status
            notes.append("the newest stored event is not in the future")
    if status == "skip":
        return Check(
            "clock skew",
            "skip",
            "no time reference (no collector answering HTTP, no stored events)",
            "pass --collector http://HOST:4318 to compare clocks",
        )
    fix = "" if status == "pass" else "synchronise this machine's clock (NTP): CARP refuses skew"
    return Check("clock skew", status, "; ".join(notes), fix)


def doctor(args: argparse.Namespace, out: Output) -> int:
    """Check the installation; exit 1 when any check fails."""
    checks = _check_versions()
    store_checks, latest = _check_store(StoreRef(args.store))
    checks += store_checks
    collector, skew = _check_collector(_collector_url(args.collector))
    checks.append(collector)
    checks.append(_check_clock(skew, latest))
    failed = any(c.status == "fail" for c in checks)
    if out.json_mode:
        out.json({"passed": not failed, "checks": [c.as_dict() for c in checks]})
        return 1 if failed else 0
    out.print(
        out.table(
            ["check", "status", "detail", "fix"],
            [
                (_esc(c.name), out.styled(c.status, c.status.upper()), _esc(c.detail), _esc(c.fix))
                for c in checks
            ],
            markup=True,
        )
    )
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "warn", "fail", "skip")}
    out.line(
        f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed, "
        f"{counts['skip']} skipped"
    )
    return 1 if failed else 0


# -- serve --------------------------------------------------------------------------------------


def serve(args: argparse.Namespace, out: Output) -> int:
    """Run the CRA HTTP server under uvicorn (1 worker) until SIGTERM / SIGINT.

    On the signal uvicorn stops accepting connections and lets the requests in flight finish
    (up to ``shutdown_timeout``); then the runtime is closed, which writes every queued event
    to the trace store.
    """
    ServerConfig = server_config_class("cra serve")  # noqa: N806 - a class
    from cra_agents import Runtime

    config = ServerConfig.load(args.config).with_options(
        host=args.host,
        port=args.port,
        store=args.store,
        atlases=tuple(args.atlas) if args.atlas else None,
    )
    if not config.api_keys and config.jwt is None:
        out.warn(
            "no API key or JWT configured: every route but health answers 401 "
            "(set CRA_API_KEYS or a config file)"
        )
    return run_server(Runtime(config.atlases, store=config.store), config)


def server_config_class(command: str) -> type[ServerConfig]:
    """The server extra's ``ServerConfig``: ``command`` needs the extra.

    The whole extra (uvicorn included) is checked now, before a runtime is built.

    Raises:
        CLIError: ``missing_dependency``.
    """
    try:
        from cra_agents.server import ServerConfig, serve  # noqa: F401 - uvicorn checked now
    except ImportError as exc:
        raise CLIError(
            "missing_dependency",
            f"{command} needs the server extra ({exc.name} is not installed)",
            "pip install 'cra-agents[server]'",
        ) from exc
    return ServerConfig


def run_server(runtime: Runtime, config: ServerConfig) -> int:
    """Serve until SIGTERM / SIGINT, one JSON access-log line per request on stderr."""
    from cra_agents.server import serve as run

    access = logging.getLogger("cra_agents.server")
    if not access.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    run(runtime, config)
    return 0
