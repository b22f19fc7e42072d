"""A live CRA HTTP server for the client's tests: real uvicorn on 127.0.0.1, the real app.

:func:`server_app` is :func:`cra_agents.server.create_app` over a real
:class:`~cra_agents.Runtime`, with the API keys of :data:`KEYS` and no request rate limit, plus
one test middleware that counts requests per (method, path) and can inject faults
(``app.state.faults``: path prefix → list of status codes to answer first, or ``"slow"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cra_agents import CRAError, Runtime
from cra_agents.server import ServerConfig, create_app
from cra_agents.server._config import ApiKey, hash_key

#: API key → (name, scopes, agent ids); principals are ``key:<name>``.
KEYS: dict[str, tuple[str, frozenset[str], frozenset[str] | None]] = {
    "key-a": ("a", frozenset({"read", "write"}), None),
    "key-b": ("b", frozenset({"read", "write"}), None),
    "key-ro": ("ro", frozenset({"read"}), None),
    "key-bot": ("bot", frozenset({"read", "write"}), frozenset({"bot"})),
}


def server_app(runtime: Runtime) -> FastAPI:
    """The server's app over ``runtime``, with request counts and fault injection."""
    config = ServerConfig(
        api_keys=tuple(
            ApiKey(name, hash_key(key), scopes, agents)
            for key, (name, scopes, agents) in KEYS.items()
        ),
        rate_limit_per_second=0,
    )
    app = create_app(runtime, config)
    app.state.counts = Counter()
    app.state.faults = {}

    @app.middleware("http")
    async def count_and_fault(request: Request, call_next: Any) -> Any:
        path = request.url.path
        app.state.counts[(request.method, path)] += 1
        for prefix, plan in app.state.faults.items():
            if path.startswith(prefix) and plan:
                fault = plan.pop(0)
                if fault == "slow":
                    await asyncio.sleep(1.0)
                    break
                return JSONResponse(
                    CRAError("injected fault").to_error_response(), status_code=int(fault)
                )
        return await call_next(request)

    return app


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        table = getattr(app.state, "cra_calls", None)
        if table is not None:  # calls left pending: recorded failed, the sweeper stopped
            table.close()
