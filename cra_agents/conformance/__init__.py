"""The upstream conformance run: ``python -m cra_agents.conformance [SUITE_DIR] [--json]``.

Runs, against this implementation:

* the CONFORMANCE.md cases that can be checked mechanically, ported here (their inputs are
  small and inline upstream): the four ``schema.carp.request.*`` cases, the three
  ``atlas.manifest.*`` cases, ``hash.compute.single_event`` (both hash vectors of
  PROTOCOL_NOTES), the three ``hash.chain.*`` cases (linkage only: their hashes are stand-ins),
  and the policy and resolution cases (with the actions they imply declared);
* the golden directories found under ``SUITE_DIR/golden`` (``simple-resolve``), compared with
  ``"$dynamic"`` as a wildcard, and every resolution and event validated against the upstream
  schemas in ``SUITE_DIR/schemas``;
* ports of the upstream Rust ``tests/conformance.rs`` tests.

``SUITE_DIR`` defaults to ``$CRA_CONFORMANCE_DIR``, else ``../shared/conformance``; upstream's
own ``specs/`` folder (or a clone of the upstream repository, :data:`UPSTREAM_REPOSITORY`) works
as it is. The output is the upstream harness format; the exit status is 1 when any case fails.
"""

from __future__ import annotations

from cra_agents.conformance._run import (
    UPSTREAM_REPOSITORY,
    Suite,
    SuiteNotFoundError,
    find_suite,
    main,
    run_conformance,
)

__all__ = [
    "UPSTREAM_REPOSITORY",
    "Suite",
    "SuiteNotFoundError",
    "find_suite",
    "main",
    "run_conformance",
]
