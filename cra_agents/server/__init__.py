"""The CRA HTTP server (``pip install 'cra-agents[server]'``, ``cra serve``).

The parts shared by every route: :mod:`cra_agents.server._principal` (who is calling).
"""

from __future__ import annotations

__all__: list[str] = []
