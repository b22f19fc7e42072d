"""``cra ingest``: run an ingest server, or send trace files to one.

``cra ingest serve --store sqlite://FILE`` (or ``postgresql://...``) is the CRA HTTP server as a
process of its own for collecting traces: no atlas is needed, the store must be one that can
ingest, and agents record into it with ``store="http://HOST:PORT?spool=DIR"``. Its credentials
come from the same configuration as ``cra serve`` (an ``[[api_keys]]`` entry with
``scopes = ["ingest"]``).

``cra ingest send FILE... --url URL`` sends JSONL trace files (``cra trace export``, a
``jsonl://`` store's files, a sink's ``rejected/`` segments once fixed) to an ingest server in
ordered batches: events it already has are counted as duplicates, so sending twice is harmless.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from cra_agents._retry import backoff_delay
from cra_agents.cli._misc import run_server, server_config_class
from cra_agents.cli._output import CLIError, Output

__all__ = ["send", "serve"]

#: Events per batch ``cra ingest send`` posts.
SEND_BATCH = 2000
_RETRIES = 4


def serve(args: argparse.Namespace, out: Output) -> int:
    """Run the ingest server until SIGTERM / SIGINT (see the module docstring)."""
    ServerConfig = server_config_class("cra ingest serve")  # noqa: N806 - a class
    from cra_agents import Runtime
    from cra_agents.trace import IngestStore

    config = ServerConfig.load(args.config).with_options(
        host=args.host, port=args.port, store=args.store
    )
    runtime = Runtime((), store=config.store)
    if not isinstance(runtime.store, IngestStore):
        kind = type(runtime.store).__name__
        runtime.close()
        raise CLIError(
            "usage",
            f"the trace store ({kind}) cannot ingest batches",
            "serve a SQLite or PostgreSQL store: --store sqlite://FILE or postgresql://...",
        )
    if config.jwt is None and not any("ingest" in key.scopes for key in config.api_keys):
        out.warn(
            "no API key has the ingest scope: every batch is refused (401/403); add an "
            '[[api_keys]] entry with scopes = ["ingest"] to the configuration file'
        )
    return run_server(runtime, config)


def send(args: argparse.Namespace, out: Output) -> int:
    """Send JSONL trace files to an ingest server, in order, in batches."""
    import httpx

    url = (args.url or os.environ.get("CRA_INGEST_URL") or "").rstrip("/")
    if not url:
        raise CLIError(
            "usage", "no ingest URL", "pass --url http://HOST:PORT or set CRA_INGEST_URL"
        )
    key = os.environ.get("CRA_INGEST_API_KEY") or os.environ.get("CRA_API_KEY")
    headers = {"content-type": "application/x-ndjson"}
    if key:
        headers["x-api-key"] = key
    compress = _compressor()
    if compress is not None:
        headers["content-encoding"] = "zstd"
    totals = {"files": 0, "batches": 0, "inserted": 0, "duplicates": 0}
    with httpx.Client(base_url=url, headers=headers, timeout=args.timeout) as client:
        for name in args.files:
            path = Path(name)
            try:
                handle = path.open("rb")
            except OSError as exc:
                raise CLIError("not_found", f"cannot read {name}: {exc}", "check the path") from exc
            with handle:
                batch: list[bytes] = []
                for line in handle:
                    if not line.strip():
                        continue
                    batch.append(line if line.endswith(b"\n") else line + b"\n")
                    if len(batch) >= args.batch:
                        _post(client, b"".join(batch), compress, totals, name)
                        batch = []
                if batch:
                    _post(client, b"".join(batch), compress, totals, name)
            totals["files"] += 1
    if getattr(args, "json", False):
        out.json(totals)
    else:
        out.line(
            f"sent {totals['files']} file(s) in {totals['batches']} batch(es): "
            f"{totals['inserted']} event(s) inserted, {totals['duplicates']} already stored"
        )
    return 0


def _compressor() -> Any:
    try:
        import zstandard
    except ImportError:  # plain JSONL then: the server takes both
        return None
    return zstandard.ZstdCompressor(level=3).compress


def _post(client: Any, raw: bytes, compress: Any, totals: dict[str, int], name: str) -> None:
    import httpx

    body = raw if compress is None else compress(raw)
    problem = ""
    for attempt in range(_RETRIES + 1):
        if attempt:
            time.sleep(backoff_delay(attempt - 1, 0.2, 5.0))
        try:
            response = client.post("/v1/ingest/batch", content=body)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
            continue
        if response.status_code == 200:
            answer = response.json()
            totals["batches"] += 1
            totals["inserted"] += int(answer["inserted"])
            totals["duplicates"] += int(answer["duplicates"])
            return
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        problem = f"HTTP {response.status_code}: {message}"
        if response.status_code not in (429, 502, 503, 504):
            break
    raise CLIError(
        "ingest_failed",
        f"the ingest refused a batch of {name}: {problem}",
        "batches before it were stored; fix the cause and send the file again (what is "
        "stored already counts as duplicates)",
        exit_code=1,
    )
