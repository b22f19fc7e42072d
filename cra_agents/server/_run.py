"""Running the server: uvicorn, one worker, a graceful shutdown that ends with the trace flushed.

On SIGTERM or SIGINT uvicorn stops accepting connections and waits for the requests in flight
(up to ``shutdown_timeout``); then :func:`serve` closes the runtime, which writes every queued
event to the store, and returns. (Plain uvicorn re-raises the signal once it has shut down,
which would end the process before the runtime is closed: this server does not.)
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator

import uvicorn

from cra_agents.runtime import Runtime
from cra_agents.server._app import create_app
from cra_agents.server._config import ServerConfig

__all__ = ["GracefulServer", "serve"]


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose signal handling ends in a return, not a re-raised signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM as "shut down gracefully" while serving."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(runtime: Runtime, config: ServerConfig) -> None:
    """Serve ``runtime`` until SIGTERM / SIGINT, then close it (the trace is flushed)."""
    app = create_app(runtime, config)
    try:
        server = GracefulServer(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                workers=1,
                access_log=False,  # ours: one JSON line per request
                timeout_graceful_shutdown=math.ceil(config.shutdown_timeout),
                lifespan="off",
                server_header=False,
            )
        )
        server.run()
    finally:
        pending = getattr(app.state, "cra_calls", None)
        if pending is not None:  # HTTP-mode calls whose outcome never came: recorded failed
            pending.close()
        runtime.close()
