"""A real OpenTelemetry collector for tests: the ``rotel`` agent from its PyPI wheel.

Started as ``rotel-agent start --otlp-grpc-endpoint 127.0.0.1:P --otlp-http-endpoint
127.0.0.1:P2 --exporter blackhole --debug-log traces --debug-log-verbosity detailed``: it
accepts OTLP over gRPC and HTTP, drops what it receives, and prints every span it got to
stdout (the format of the OpenTelemetry Collector's debug exporter), which
:func:`parse_debug_log` reads back.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cra_agents.otel import ExportedSpan


def rotel_binary() -> Path | None:
    """The agent binary shipped inside the ``rotel`` wheel, if installed."""
    try:
        import rotel  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(rotel.__file__).parent / "rotel-agent"
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Collector:
    """A running rotel agent and where it writes what it received."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log: Path
    _offset: int = field(default=0)

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def mark(self) -> None:
        """Only spans received after this call are returned by :meth:`spans`."""
        self._offset = self.log.stat().st_size

    def spans(self) -> list[ExportedSpan]:
        return parse_debug_log(self.log.read_bytes()[self._offset :].decode("utf-8", "replace"))

    def wait_for(self, count: int, timeout: float = 20.0) -> list[ExportedSpan]:
        """The spans received since :meth:`mark`, once there are at least ``count``."""
        deadline = time.monotonic() + timeout
        spans = self.spans()
        while len(spans) < count and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rotel exited with {self.process.returncode}")
            time.sleep(0.05)
            spans = self.spans()
        return spans

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_collector(binary: Path, log: Path, timeout: float = 15.0) -> Collector:
    """Start rotel on two free loopback ports and wait until both accept connections."""
    grpc_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
    env["NO_COLOR"] = "1"
    # The agent embeds Python and links libpython3.11; the interpreter's own copy will do.
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (env.get("LD_LIBRARY_PATH"), libdir) if p
        )
    handle = log.open("wb")
    process = subprocess.Popen(
        [
            str(binary),
            "start",
            "--otlp-grpc-endpoint",
            f"127.0.0.1:{grpc_port}",
            "--otlp-http-endpoint",
            f"127.0.0.1:{http_port}",
            "--exporter",
            "blackhole",
            "--debug-log",
            "traces",
            "--debug-log-verbosity",
            "detailed",
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
    )
    handle.close()
    collector = Collector(process, grpc_port, http_port, log)
    deadline = time.monotonic() + timeout
    pending = {grpc_port, http_port}
    while pending:
        if process.poll() is not None:
            raise RuntimeError(
                f"rotel exited with {process.returncode}: {log.read_text(errors='replace')}"
            )
        if time.monotonic() > deadline:
            collector.stop()
            raise RuntimeError(f"rotel did not listen within {timeout}s")
        for port in list(pending):
            with socket.socket() as sock:
                sock.settimeout(0.2)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    pending.discard(port)
        time.sleep(0.02)
    return collector


_HEADER = re.compile(
    r"^    (Trace ID|Parent ID|ID|Name|Kind|Status code|Status message)\s*: ?(.*)$"
)
_ATTRIBUTE = re.compile(r"^     -> ([^:]+): (Str|Int|Bool|Double)\((.*)\)$")


def _value(kind: str, text: str) -> Any:
    if kind == "Int":
        return int(text)
    if kind == "Bool":
        return text == "true"
    if kind == "Double":
        return float(text)
    return text


def parse_debug_log(text: str) -> list[ExportedSpan]:
    """Spans from rotel's ``--debug-log traces --debug-log-verbosity detailed`` output.

    Values are one line each here (we never put newlines in attributes); lines of log
    records and resources are skipped.
    """
    spans: list[ExportedSpan] = []
    current: dict[str, Any] | None = None
    section = ""

    def close() -> None:
        if current is not None:
            spans.append(
                ExportedSpan(
                    name=current.get("Name", ""),
                    trace_id=current.get("Trace ID", ""),
                    span_id=current.get("ID", ""),
                    parent_span_id=current.get("Parent ID") or None,
                    attributes=current["attributes"],
                    status_code=current.get("Status code", "").removeprefix("STATUS_CODE_"),
                )
            )

    for line in text.splitlines():
        if line.startswith("Span #"):
            close()
            current = {"attributes": {}}
            section = "span"
            continue
        if current is None:
            continue
        if line.startswith(("ResourceSpans #", "ScopeSpans #")):
            close()
            current = None
            continue
        if line in ("Attributes:", "Events:", "Links:"):
            section = line[:-1]
            continue
        header = _HEADER.match(line)
        if header and section == "span":
            current[header.group(1)] = header.group(2).strip()
            continue
        attribute = _ATTRIBUTE.match(line)
        if attribute and section == "Attributes":
            current["attributes"][attribute.group(1)] = _value(
                attribute.group(2), attribute.group(3)
            )
    close()
    return spans
