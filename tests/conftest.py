from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cra_agents.examples import atlas_path
from tests.harness.collector import Collector, rotel_binary, start_collector
from tests.harness.postgres import Cluster, Server, pg_bindir, start_cluster

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = atlas_path("github-ops").parent
DEFAULT_CONFORMANCE_DIR = REPO_ROOT.parent / "shared" / "conformance"

_MINIMAL_MANIFEST: dict[str, object] = {
    "atlas_version": "1.0",
    "atlas_id": "com.example.test",
    "version": "1.0.0",
    "name": "Test Atlas",
    "description": "A minimal Atlas 1.0 manifest for tests.",
}


@pytest.fixture(autouse=True)
def memory_trace_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runtimes built without a store keep their trace in memory, not in ./.cra/."""
    for name in [n for n in os.environ if n.startswith("CRA_AGENTS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CRA_AGENTS_STORE", "memory://")


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """The upstream conformance material (schemas, golden cases, real atlases), read-only.

    ``CRA_CONFORMANCE_DIR`` overrides the default ``../shared/conformance`` next to the repository.
    Missing material skips the test locally and fails it on CI, where it must be present.
    """
    configured = os.environ.get("CRA_CONFORMANCE_DIR")
    path = Path(configured) if configured else DEFAULT_CONFORMANCE_DIR
    if not path.is_dir():
        message = f"upstream conformance material not found at {path}; set CRA_CONFORMANCE_DIR"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def github_ops() -> Path:
    """The example GitHub operations atlas directory shipped in ``examples/``."""
    return EXAMPLES_DIR / "github-ops"


@pytest.fixture
def make_manifest():
    """Factory for a minimal valid Atlas 1.0 manifest dict; keyword arguments override keys."""

    def make(**overrides: object) -> dict[str, object]:
        manifest: dict[str, object] = copy.deepcopy(_MINIMAL_MANIFEST)
        manifest.update(copy.deepcopy(overrides))
        return manifest

    return make


@pytest.fixture(scope="session")
def otel_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """A real OTLP collector (rotel) on free loopback ports, stopped at the end of the run."""
    binary = rotel_binary()
    if binary is None:
        message = "the rotel collector wheel is not installed (uv sync installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    running = start_collector(binary, tmp_path_factory.mktemp("rotel") / "rotel.log")
    yield running
    running.stop()


def _absent(message: str) -> None:
    """Skip the test, or fail it on CI (``CI=true``), where the service must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """A PostgreSQL server: ``CRA_TEST_PG_DSN``, else a throwaway cluster (see harness)."""
    configured = os.environ.get("CRA_TEST_PG_DSN")
    if configured:
        yield Server(configured)
        return
    bindir = pg_bindir()
    if bindir is None:
        _absent("PostgreSQL is not installed and CRA_TEST_PG_DSN is not set (.ci/postgres)")
    assert bindir is not None
    cluster = start_cluster(bindir)
    try:
        yield Server(cluster.dsn)
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_server: Server) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of the test's own, which it may stop and start."""
    bindir = pg_bindir()
    if bindir is None:
        _absent("PostgreSQL is not installed (initdb, pg_ctl): .ci/postgres installs it")
    assert bindir is not None
    cluster = start_cluster(bindir)
    yield cluster
    cluster.destroy()
