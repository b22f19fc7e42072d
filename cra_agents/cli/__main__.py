"""``python -m cra_agents.cli``: the ``cra`` command."""

from __future__ import annotations

import sys

from cra_agents.cli import main

sys.exit(main())
