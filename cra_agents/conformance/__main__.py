"""``python -m cra_agents.conformance``."""

from __future__ import annotations

import sys

from cra_agents.conformance import main

sys.exit(main())
