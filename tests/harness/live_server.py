"""A real uvicorn server on 127.0.0.1 (a free port) in a thread, for the server's tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from cra_agents import Runtime
from cra_agents.server import ServerConfig, create_app


@dataclass
class LiveServer:
    url: str
    runtime: Runtime
    app: Any
    config: ServerConfig


@contextlib.contextmanager
def live_server(runtime: Runtime, config: ServerConfig) -> Iterator[LiveServer]:
    """Serve ``runtime`` under ``config`` until the block ends (the runtime stays open)."""
    app = create_app(runtime, config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", runtime, app, config)
    finally:
        server.should_exit = True
        thread.join(10)
