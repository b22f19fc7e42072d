"""``python -m cra_agents_mcp proxy ...``: the same as ``cra mcp proxy ...``."""

from __future__ import annotations

import sys

from cra_agents.cli import main

if __name__ == "__main__":
    sys.exit(main(["mcp", *sys.argv[1:]]))
