"""A real PostgreSQL server for tests: ``CRA_TEST_PG_DSN``, or a throwaway cluster of our own.

``CRA_TEST_PG_DSN`` (what ``.ci/postgres`` exports) names a server where the DSN's user may
create databases. Without it, when the PostgreSQL binaries are installed (``initdb`` and
``pg_ctl`` on ``PATH`` or under ``/usr/lib/postgresql/*/bin``), :func:`start_cluster` makes a
cluster in a temporary directory, listening on 127.0.0.1 only on a free port with trust
authentication, and :meth:`Cluster.destroy` stops it and removes the directory. ``initdb``
refuses to run as root: as root, the cluster belongs to the ``postgres`` user.

Every test gets a database of its own (:meth:`Server.create_database`), dropped afterwards, so
tests never see each other's events.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.harness.collector import free_port
from tests.harness.processes import run_bounded

__all__ = ["Cluster", "Server", "pg_bindir", "start_cluster"]

_TIMEOUT = 60.0  # seconds any pg_ctl / initdb step may take


def pg_bindir() -> Path | None:
    """The directory with ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def with_database(dsn: str, database: str) -> str:
    """``dsn`` (a ``postgresql://`` URL) naming ``database`` instead of its own."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass
class Server:
    """A PostgreSQL server a test may create databases on."""

    dsn: str
    created: list[str] = field(default_factory=list)

    def create_database(self) -> str:
        """A new empty database; its URL (the server's DSN naming it)."""
        import psycopg

        name = f"cra_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return with_database(self.dsn, name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database` (connections to it are ended)."""
        import psycopg

        name = urlsplit(url).path.lstrip("/")
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Cluster:
    """A cluster this process started: its data directory, port and owner."""

    directory: Path
    port: int
    bindir: Path
    owner: str | None  # the user the server runs as when we are root

    @property
    def dsn(self) -> str:
        """The URL of its ``postgres`` database as the ``postgres`` superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def _run(self, *argv: str) -> str:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        done = run_bounded(command, timeout=_TIMEOUT, cwd=self.directory)
        if done.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}\n{tail}"
            )
        return done.stdout

    def start(self) -> None:
        """Start the server (again) on its port; returns once it accepts connections."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(int(_TIMEOUT)),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: ends every connection; ``immediate``: as a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def reload(self) -> None:
        """Make the server read its configuration files again (``pg_hba.conf``)."""
        self._run("pg_ctl", "-D", str(self.data), "reload")
        time.sleep(0.2)  # the postmaster reloads asynchronously

    def destroy(self) -> None:
        """Stop the server if it runs and remove its directory."""
        with contextlib.suppress(RuntimeError, TimeoutError):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster(bindir: Path, *, fsync: bool = False) -> Cluster:
    """A new cluster in a temporary directory, started on a free loopback port.

    Args:
        bindir: Where ``initdb`` and ``pg_ctl`` are.
        fsync: Keep PostgreSQL's fsync on (off by default: tests do not survive power loss,
            and the shared test machine's disk is slow).

    Raises:
        RuntimeError: a step failed (its output is in the message).
    """
    owner = None
    directory = Path(tempfile.mkdtemp(prefix="cra-pg-"))
    if os.geteuid() == 0:
        owner = "postgres"
        entry = pwd.getpwnam(owner)  # KeyError: no such user
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(directory, free_port(), bindir, owner)
    try:
        cluster._run(
            "initdb",
            "-D",
            str(cluster.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        conf = cluster.data / "postgresql.conf"
        extra = ["max_connections = 100", "shared_buffers = 32MB"]
        if not fsync:
            extra += ["fsync = off", "full_page_writes = off"]
        with conf.open("a") as handle:
            handle.write("\n".join(extra) + "\n")
        deadline = time.monotonic() + _TIMEOUT
        while True:
            try:
                cluster.start()
                break
            except RuntimeError:
                # The port was taken between choosing and binding it: try another.
                if time.monotonic() > deadline:
                    raise
                cluster.port = free_port()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
