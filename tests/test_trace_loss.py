"""The record cannot be quietly lost (issue 14): a store that fails in ``async`` mode.

Real faults on real file systems, for both writers (thread and process) and both file stores
(JSONL and SQLite):

* a full disk: a tiny tmpfs filled to the last page (needs ``mount``, i.e. root), and
  ``RLIMIT_FSIZE`` in a child process (``EFBIG``, no privilege needed);
* a store deleted under the running writer (``shutil.rmtree`` / ``unlink``);
* a read-only directory or file at configure time (a read-only tmpfs or bind mount as root,
  ``chmod`` otherwise).

Each test prints the figure of the reliability table (``pytest -s`` shows it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.trace import JsonlStore, SqliteStore, open_store

GITHUB_OPS = atlas_path("github-ops")
CALLS = 400

WRITERS = ["thread", "process"]
STORES = ["jsonl", "sqlite"]


def _url(kind: str, place: Path) -> str:
    return f"jsonl://{place}" if kind == "jsonl" else f"sqlite://{place / 'traces.db'}"


class Mounts:
    """tmpfs and bind mounts made by a test, undone at its end (skips without privilege)."""

    def __init__(self) -> None:
        self.made: list[Path] = []

    def run(self, *args: str) -> None:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a file system needs root and mount(8)")
        done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
        if done.returncode:
            pytest.skip(f"mount {' '.join(args)} failed here: {done.stderr.strip()}")

    def tmpfs(self, where: Path, options: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        self.run("-t", "tmpfs", "-o", options, "tmpfs", str(where))
        self.made.append(where)
        return where

    def read_only_file(self, path: Path) -> None:
        self.run("--bind", str(path), str(path))
        self.made.append(path)
        self.run("-o", "remount,bind,ro", str(path))

    def undo(self) -> None:
        for where in reversed(self.made):
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    made = Mounts()
    yield made
    made.undo()


def _fill(directory: Path) -> None:
    """Write until the file system is full (unbuffered, so nothing is left to flush)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def _delete(kind: str, place: Path) -> None:
    if kind == "jsonl":
        shutil.rmtree(place)
    else:
        for name in ("traces.db", "traces.db-wal", "traces.db-shm"):
            (place / name).unlink(missing_ok=True)


@cra.guarded("github.issue.list")
def list_issues(repo: str) -> list[str]:
    return [repo]


def _run_until_refused(fault: Callable[[], None]) -> tuple[int, int, float, set[str]]:
    """Inside a session, inject ``fault`` then make CALLS guarded calls, one per ms.

    Returns (calls that ran after the fault, calls refused, ms from the fault to the first
    refusal, the codes of the refusals).
    """
    list_issues("acme/app")  # the store works: this call is recorded
    cra.get_runtime().flush()
    fault()
    started = time.monotonic()
    ran = refused = 0
    first = float("nan")
    codes: set[str] = set()
    for _ in range(CALLS):
        try:
            list_issues("acme/app")
            ran += 1
        except cra.CRAError as exc:
            if not refused:
                first = (time.monotonic() - started) * 1000
            refused += 1
            codes.add(exc.code)
        time.sleep(0.001)
    return ran, refused, first, codes


def _assert_reported(
    label: str,
    caplog: pytest.LogCaptureFixture,
    fault: Callable[[], None],
) -> None:
    """The whole contract: refusals, a count, a log line, and raises at every exit door."""
    outcome: tuple[int, int, float, set[str]] = (0, 0, 0.0, set())
    with caplog.at_level(logging.ERROR, logger="cra_agents"):
        with (
            pytest.raises(cra.TraceUnavailableError) as at_exit,
            cra.session(agent_id="bot", goal="Triage"),
        ):
            outcome = _run_until_refused(fault)
        runtime = cra.get_runtime()
        stats = runtime.trace_stats()
        with pytest.raises(cra.TraceUnavailableError):
            runtime.flush()
        with pytest.raises(cra.TraceUnavailableError):
            cra.shutdown()
    ran, refused, first_ms, codes = outcome
    print(
        f"\n[loss] {label}: {ran}/{CALLS} calls ran after the fault, {refused} refused "
        f"(first after {first_ms:.0f} ms), {stats.unrecorded} events unrecorded, "
        f"{stats.refused} refusals counted"
    )
    assert at_exit.value.code == "TRACE_UNAVAILABLE"
    assert refused > 0
    assert ran + refused == CALLS
    assert codes == {"TRACE_UNAVAILABLE"}
    assert runtime.trace_failure is not None
    assert stats.failure is not None
    assert stats.refused >= refused
    assert stats.unrecorded > 0
    assert "trace_unavailable" in caplog.text
    # Every call after the first refusal was refused too: no call slips through later.
    assert first_ms < 5000


@pytest.fixture
def no_runtime() -> Iterator[None]:
    yield
    with contextlib.suppress(cra.CRAError):
        cra.shutdown()


@pytest.mark.usefixtures("no_runtime")
class TestAsyncStoreFailure:
    @pytest.mark.parametrize("writer", WRITERS)
    @pytest.mark.parametrize("kind", STORES)
    def test_store_deleted_under_the_writer(self, tmp_path, caplog, kind, writer):
        """The store is deleted while in use: later calls refused, the loss raised everywhere."""
        place = tmp_path / "store"
        cra.configure([GITHUB_OPS], store=_url(kind, place), writer=writer)
        _assert_reported(f"deleted {kind}/{writer}", caplog, lambda: _delete(kind, place))

    @pytest.mark.parametrize("writer", WRITERS)
    @pytest.mark.parametrize("kind", STORES)
    def test_disk_full(self, tmp_path, mounts, caplog, kind, writer):
        """A 256 KiB tmpfs filled up: later calls refused, the loss raised everywhere."""
        place = mounts.tmpfs(tmp_path / "store", "size=256k")
        cra.configure([GITHUB_OPS], store=_url(kind, place), writer=writer)
        _assert_reported(f"ENOSPC {kind}/{writer}", caplog, lambda: _fill(place))

    def test_a_good_store_reports_nothing(self, tmp_path):
        """The same doors stay quiet when every event was recorded."""
        cra.configure([GITHUB_OPS], store=_url("jsonl", tmp_path / "store"))
        with cra.session(agent_id="bot", goal="Triage"):
            list_issues("acme/app")
        runtime = cra.get_runtime()
        assert runtime.flush()
        stats = runtime.trace_stats()
        assert (stats.unrecorded, stats.refused, stats.failure) == (0, 0, None)
        assert stats.appended == stats.written == 6
        cra.shutdown()
        runtime.close()  # closing again is harmless


FSIZE_AGENT = textwrap.dedent(
    """
    import resource, signal, sys, time
    import cra_agents as cra

    atlas, url, writer = sys.argv[1:4]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a signal
    cra.configure([atlas], store=url, writer=writer)

    @cra.guarded("github.issue.list")
    def list_issues(repo):
        return [repo]

    with cra.session(agent_id="bot", goal="Warm up"):
        list_issues("acme/app")
    cra.get_runtime().flush()  # the writer is up and the store works; now the limit
    limit = 64 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    # The writer process is already running: it keeps its own (unlimited) limit, so the limit
    # is put on it too, as a quota would be.
    pid = cra.get_runtime()._collector.writer_pid
    if pid is not None:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))

    ran = refused = 0
    try:
        with cra.session(agent_id="bot", goal="Fill the file"):
            for _ in range(4000):
                try:
                    list_issues("acme/app")
                    ran += 1
                except cra.TraceUnavailableError:
                    refused += 1
                    if refused >= 50:
                        break
                time.sleep(0.0005)
        exit_raised = False
    except cra.TraceUnavailableError:
        exit_raised = True
    stats = cra.get_runtime().trace_stats()
    try:
        cra.shutdown()
        shutdown_raised = False
    except cra.TraceUnavailableError:
        shutdown_raised = True
    print("RESULT", ran, refused, exit_raised, shutdown_raised, stats.unrecorded)
    """
)


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", STORES)
def test_file_size_limit(tmp_path, kind, writer):
    """RLIMIT_FSIZE (EFBIG, no privilege needed): refused, and raised at exit and shutdown."""
    done = subprocess.run(
        [sys.executable, "-c", FSIZE_AGENT, str(GITHUB_OPS), _url(kind, tmp_path), writer],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, done.stderr[-2000:]
    _, ran, refused, exit_raised, shutdown_raised, unrecorded = lines[0].split()
    print(
        f"\n[loss] EFBIG {kind}/{writer}: {ran} calls ran before the 64 KiB limit was hit, "
        f"then {refused} refused; {unrecorded} events unrecorded"
    )
    assert int(refused) > 0
    assert exit_raised == shutdown_raised == "True"
    assert "trace_unavailable" in done.stderr  # logged (EFBIG; SQLite says "disk I/O error")


class TestConfigureRefusesAStoreItCannotWrite:
    @pytest.fixture
    def read_only_dir(self, tmp_path: Path, mounts: Mounts) -> Path:
        """A directory this process cannot write: a read-only tmpfs as root, else chmod."""
        place = tmp_path / "ro"
        if os.geteuid() == 0:
            return mounts.tmpfs(place, "ro,size=64k")
        place.mkdir()
        place.chmod(0o555)
        return place

    @pytest.mark.parametrize("writer", WRITERS)
    @pytest.mark.parametrize("kind", STORES)
    def test_read_only_directory(self, read_only_dir, kind, writer):
        """JSONL used to accept a read-only directory; both stores now refuse it at once."""
        with pytest.raises(cra.ConfigurationError) as info:
            cra.Runtime([GITHUB_OPS], store=_url(kind, read_only_dir), writer=writer)
        assert info.value.details["reason"] == "store_not_writable"
        print(f"\n[loss] read-only dir {kind}/{writer}: refused at Runtime() ({info.value.code})")

    def test_configure_refuses_too(self, read_only_dir):
        """cra.configure() is the same check, and leaves no runtime configured."""
        with pytest.raises(cra.ConfigurationError):
            cra.configure([GITHUB_OPS], store=_url("jsonl", read_only_dir))
        with pytest.raises(cra.ConfigurationError, match="not configured"):
            cra.get_runtime()

    @pytest.mark.parametrize("writer", WRITERS)
    def test_read_only_database_file(self, tmp_path, mounts, writer):
        """A SQLite file that cannot be written (in a writable directory) is refused."""
        path = tmp_path / "traces.db"
        SqliteStore(path).close()
        if os.geteuid() == 0:
            mounts.read_only_file(path)
        else:
            path.chmod(0o444)
        with pytest.raises(cra.ConfigurationError) as info:
            cra.Runtime([GITHUB_OPS], store=f"sqlite://{path}", writer=writer)
        assert info.value.details["reason"] == "store_not_writable"
        assert "readonly" in info.value.details["cause"]

    def test_a_store_object_is_probed_too(self, read_only_dir):
        """A store built by the caller is asked through its check_writable()."""
        store = JsonlStore(read_only_dir)
        with pytest.raises(cra.ConfigurationError, match="JsonlStore cannot be written"):
            cra.Runtime([GITHUB_OPS], store=store)

    def test_read_only_commands_still_open_it(self, read_only_dir):
        """Reading (the CLI) needs no write access: only the runtime probes."""
        store = open_store(f"jsonl://{read_only_dir}", durable=False)
        assert store.sessions() == []
        store.close()

    def test_an_unopenable_store_is_a_configuration_error(self, tmp_path):
        """A path the store cannot even create is a ConfigurationError with a stable reason."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        with pytest.raises(cra.ConfigurationError) as info:
            open_store(f"sqlite://{blocker / 'traces.db'}")
        assert info.value.details["reason"] == "store_not_openable"


class TestDeletedUnderTheStore:
    def test_jsonl_file_deleted(self, tmp_path):
        """One session file unlinked while open: the next sync says so."""
        from cra_agents.trace import SessionChain

        store = JsonlStore(tmp_path, durable=False)
        chain = SessionChain("3f1c2a9e-0000-4000-8000-000000000001", "t")
        chain.append("session.started", {"agent_id": "a"})
        store.append(chain.flush())
        store.sync()
        store.path(chain.session_id).unlink()
        chain.append("context.injected", {"n": 1})
        store.append(chain.flush())
        with pytest.raises(FileNotFoundError, match="deleted while in use"):
            store.sync()
        store.close()

    def test_jsonl_directory_replaced(self, tmp_path):
        """A new directory put where the old one was is not the store."""
        from cra_agents.trace import SessionChain

        place = tmp_path / "j"
        store = JsonlStore(place, durable=False)
        chain = SessionChain("3f1c2a9e-0000-4000-8000-000000000002", "t")
        chain.append("session.started", {"agent_id": "a"})
        store.append(chain.flush())
        shutil.rmtree(place)
        place.mkdir()
        with pytest.raises(FileNotFoundError, match="deleted or replaced"):
            store.sync()
        store.close()


class TestEveryDoorReports:
    def test_configure_over_a_failed_runtime_logs_its_loss(self, caplog):
        """Replacing a runtime whose trace failed logs the loss; the new one is in place."""
        from tests.test_stores import FailingStore

        cra.configure([GITHUB_OPS], store=FailingStore(ok=0))
        cra.get_runtime().create_session("bot", "Lost")
        with pytest.raises(cra.TraceUnavailableError):
            cra.get_runtime().flush()
        with caplog.at_level(logging.ERROR, logger="cra_agents"):
            fresh = cra.configure([GITHUB_OPS], store="memory://")
        assert "closing the previous cra_agents runtime" in caplog.text
        assert cra.get_runtime() is fresh
        cra.shutdown()

    def test_the_exit_hook_logs_instead_of_raising(self, caplog):
        """At interpreter exit nobody can catch the error: it is logged."""
        from cra_agents import guard
        from tests.test_stores import FailingStore

        cra.configure([GITHUB_OPS], store=FailingStore(ok=0))
        cra.get_runtime().create_session("bot", "Lost")
        with pytest.raises(cra.TraceUnavailableError):
            cra.get_runtime().flush()
        with caplog.at_level(logging.ERROR, logger="cra_agents"):
            guard._shutdown_at_exit()
        assert "not recorded" in caplog.text
        guard._shutdown_at_exit()  # nothing configured: nothing to report

    def test_sync_commits_count_each_event_once(self):
        """A late commit of an older sequence (another thread's) adds nothing to the count."""
        from cra_agents.trace import MemoryStore, SessionChain, TraceCollector

        collector = TraceCollector(MemoryStore(), durability="sync")
        chain = SessionChain("3f1c2a9e-0000-4000-8000-000000000003", "t")
        first = chain.append("session.started", {"agent_id": "a"})
        second = chain.append("context.injected", {"n": 1})
        collector.committed(chain, second)
        collector.committed(chain, first)
        assert collector.stats().appended == collector.stats().written == 2
        collector.close()

    def test_a_send_to_a_dead_writer_waits_for_its_reason(self, tmp_path):
        """The pipe breaks when the child died: the reader's report is awaited, then raised."""
        import signal

        from cra_agents.trace._process import WriterProcess

        exits: list[BaseException] = []
        process = WriterProcess(
            f"jsonl://{tmp_path}", durable=False, on_ack=lambda ack: None, on_exit=exits.append
        )
        os.kill(process.pid, signal.SIGKILL)
        process.process.wait()

        def flood() -> None:
            for _ in range(100):  # the pipe buffer may take a few frames first
                process.send([("s", "t", False, [(0, 0, [("x.y", b"{}")] * 1000)])])

        with pytest.raises(BrokenPipeError):
            flood()
        assert exits
        assert "exited unexpectedly" in str(exits[0])
        process.close(timeout=5)

    def test_an_unreadable_stored_session_is_unknown(self, tmp_path):
        """session(id) on a damaged file in the store: not found, never a crash."""
        runtime = cra.Runtime([GITHUB_OPS], store=f"jsonl://{tmp_path}", writer="thread")
        damaged = "3f1c2a9e-0000-4000-8000-000000000004"
        (tmp_path / f"{damaged}.trace.jsonl").write_text('{"not": "an event"}\n')
        with pytest.raises(cra.SessionNotFoundError):
            runtime.session(damaged)
        runtime.close()
