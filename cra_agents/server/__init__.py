"""The CRA HTTP server (``pip install 'cra-agents[server]'``, ``cra serve``).

:func:`create_app` builds the FastAPI app of a :class:`~cra_agents.Runtime` under a
:class:`ServerConfig`; :func:`serve` runs it under uvicorn until SIGTERM, then closes the
runtime (what ``cra serve`` does). They are imported lazily: ``cra_agents.server._principal``
(who is calling; shared with the client) imports no web framework.
"""

from __future__ import annotations

import typing

from cra_agents._lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cra_agents.server._app import create_app
    from cra_agents.server._config import ServerConfig
    from cra_agents.server._run import serve

__all__ = ["ServerConfig", "create_app", "serve"]

__getattr__, __dir__ = _lazy_exports(
    __name__,
    {
        "ServerConfig": "cra_agents.server._config",
        "create_app": "cra_agents.server._app",
        "serve": "cra_agents.server._run",
    },
)
