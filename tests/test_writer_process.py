"""The writer process: same chains as the writer thread, faults closed, no orphans, no loss."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cra_agents as cra
from cra_agents._ids import new_id
from cra_agents.examples import atlas_path
from cra_agents.protocol import TraceEvent
from cra_agents.protocol import events as ev
from cra_agents.trace import (
    JsonlStore,
    MemoryStore,
    SessionChain,
    SqliteStore,
    TraceCollector,
    open_store,
    verify_chain,
)
from cra_agents.trace._jsonl import event_line
from cra_agents.trace._store import writer_url

ROOT = Path(__file__).resolve().parents[1]
GITHUB_OPS = atlas_path("github-ops")


def read_file(repo: str, path: str) -> str:
    return f"{repo}:{path}"


def _call(runtime: cra.Runtime, session_id: str, path: str) -> None:
    with runtime.call(
        "github.file.read", {"repo": "acme/app", "path": path}, session_id=session_id
    ) as c:
        c.result = read_file("acme/app", path)


def _record(runtime: cra.Runtime, calls: int = 5) -> str:
    session = runtime.create_session("proc-bot", "Read files")
    for index in range(calls):
        _call(runtime, session.session_id, f"f{index}.py")
    with (
        pytest.raises(cra.ActionDenied),
        runtime.call(
            "github.repo.delete",
            {"repo": "acme/app", "confirm_name": "acme/app"},
            session_id=session.session_id,
        ),
    ):
        pass
    runtime.end_session(session.session_id)
    return session.session_id


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("scheme", ["jsonl", "sqlite"])
@pytest.mark.parametrize("durability", ["async", "group", "sync"])
def test_process_and_thread_writers_write_the_same_chains(tmp_path, scheme, durability):
    """Same calls through both writers: same events, same line layout, both chains verify."""
    chains = {}
    for writer in ("thread", "process"):
        target = tmp_path / writer
        url = f"jsonl://{target}" if scheme == "jsonl" else f"sqlite://{target}.db"
        runtime = cra.Runtime([GITHUB_OPS], store=url, durability=durability, writer=writer)
        assert (runtime._collector.writer_pid is None) == (writer == "thread")
        session_id = _record(runtime)
        runtime.close()
        store = open_store(url)
        events = store.read(session_id)
        store.close()
        assert verify_chain(events).valid
        chains[writer] = events
        if scheme == "jsonl":
            lines = (target / f"{session_id}.trace.jsonl").read_bytes().splitlines(keepends=True)
            # Every stored line is exactly the canonical layout of the event it holds.
            assert lines == [event_line(event) for event in events]
    thread, process = chains["thread"], chains["process"]
    assert [e.event_type for e in thread] == [e.event_type for e in process]

    def shape(events: list[TraceEvent]) -> list[dict[str, object]]:
        volatile = {"execution_id", "resolution_id", "session_id", "duration_ms", "started_at"}
        return [
            {k: v for k, v in e.payload.items() if k not in volatile and not k.endswith("_at")}
            for e in events
        ]

    assert shape(thread) == shape(process)
    for events in (thread, process):
        assert [list(e.__dict__) for e in events] == [list(thread[0].__dict__)] * len(events)


def test_writer_choice(tmp_path, monkeypatch):
    jsonl, sqlite = JsonlStore(tmp_path / "j"), SqliteStore(tmp_path / "s.db")
    monkeypatch.delenv("CRA_AGENTS_WRITER", raising=False)
    assert writer_url(jsonl) == f"jsonl://{(tmp_path / 'j').resolve()}"
    assert writer_url(sqlite) == f"sqlite://{(tmp_path / 's.db').resolve()}"
    assert writer_url(MemoryStore()) is None  # auto: a thread for what no process can open
    assert writer_url(sqlite, "thread") is None
    monkeypatch.setenv("CRA_AGENTS_WRITER", "thread")
    assert writer_url(sqlite) is None
    assert writer_url(sqlite, "process") is not None  # explicit beats the environment
    monkeypatch.setenv("CRA_AGENTS_WRITER", "fork")
    with pytest.raises(cra.ConfigurationError, match="CRA_AGENTS_WRITER") as info:
        writer_url(sqlite)
    assert info.value.details["reason"] == "unknown_writer"
    with pytest.raises(cra.ConfigurationError, match="jsonl:// or sqlite://") as info:
        cra.Runtime([GITHUB_OPS], store="memory://", writer="process")
    assert info.value.details["reason"] == "writer_needs_file_store"
    with pytest.raises(cra.ConfigurationError, match="writer must be one of") as info:
        writer_url(sqlite, "fork")  # type: ignore[arg-type]
    assert info.value.details["reason"] == "unknown_writer"
    jsonl.close()
    sqlite.close()


def test_killed_writer_refuses_later_calls(tmp_path):
    """kill -9 of the writer process: every later call is refused, shutdown does not hang."""
    runtime = cra.Runtime([GITHUB_OPS], store=f"sqlite://{tmp_path}/t.db", writer="process")
    pid = runtime._collector.writer_pid
    assert pid is not None
    session_id = runtime.create_session("bot", "Read files").session_id
    _call(runtime, session_id, "a.py")
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid)
    deadline = time.monotonic() + 10
    refused = None
    while refused is None and time.monotonic() < deadline:
        try:
            _call(runtime, session_id, "b.py")
        except cra.TraceUnavailableError as exc:
            refused = exc
        time.sleep(0.01)
    assert refused is not None
    assert refused.code == "TRACE_UNAVAILABLE"
    assert "writer process" in str(refused)
    ran = []
    with (
        pytest.raises(cra.TraceUnavailableError),
        runtime.call(
            "github.file.read", {"repo": "acme/app", "path": "c.py"}, session_id=session_id
        ),
    ):
        ran.append("c.py")
    assert ran == []
    started = time.monotonic()
    with pytest.raises(cra.TraceUnavailableError):  # the loss is reported at close
        runtime.close()
    assert time.monotonic() - started < 5


def test_store_error_in_the_writer_process_fails_closed(tmp_path):
    """The child's store fails (its directory vanished): reported, later calls refused."""
    directory = tmp_path / "gone"
    runtime = cra.Runtime([GITHUB_OPS], store=f"jsonl://{directory}", writer="process")
    shutil.rmtree(directory)
    (tmp_path / "gone").write_text("a file where the directory was")
    session_id = runtime.create_session("bot", "Read files").session_id
    with pytest.raises(cra.TraceUnavailableError) as info:  # noqa: PT012 - refused in the loop
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _call(runtime, session_id, "a.py")
            time.sleep(0.01)
    assert "trace writer process failed" in str(info.value)
    with pytest.raises(cra.TraceUnavailableError):
        runtime.close()


def test_a_stalled_writer_process_is_a_dead_one(tmp_path):
    """SIGSTOP: group callers wait at most the deadline, then every call is refused.

    The deadline (3 s) leaves room for the first write on a loaded 2-core machine.
    """
    store = JsonlStore(tmp_path / "j")
    collector = TraceCollector(
        store,
        durability="group",
        backpressure_timeout=3.0,
        process_url=f"jsonl://{tmp_path / 'j'}",
    )
    chain = SessionChain("s-1", "t-1")
    pid = collector.writer_pid
    assert pid is not None
    collector.committed(chain, chain.append("session.started", {"agent_id": "a"}))
    assert chain.durable == 0
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(cra.TraceUnavailableError):
            collector.committed(chain, chain.append("context.injected", {"n": 1}))
        assert time.monotonic() - started < 10
        with pytest.raises(cra.TraceUnavailableError):
            collector.check()
    finally:
        os.kill(pid, signal.SIGCONT)
    collector.close(timeout=5)
    assert _wait_gone(pid)


AGENT = """
import sys, cra_agents as cra
rt = cra.Runtime([sys.argv[1]], store=sys.argv[2], durability=sys.argv[3], writer="process")
s = rt.create_session("crash-bot", "Triage new bug reports")
print("WRITER", rt._collector.writer_pid, s.session_id, flush=True)
n = 0
while True:
    rt.resolve(cra.resolve_request(s))
    n += 1
    info = rt.session(s.session_id)
    if sys.argv[3] == "async" and n % 20 == 0:
        rt.flush()  # handed over and acknowledged up to here
        print("FLUSHED", info.event_count, flush=True)
    else:
        print("ACK", info.durable_count, flush=True)
"""


@pytest.mark.parametrize(("scheme", "durability"), [("sqlite", "group"), ("jsonl", "async")])
def test_kill_9_of_the_agent_leaves_no_orphan_and_loses_nothing_handed_over(
    tmp_path, scheme, durability
):
    url = f"sqlite://{tmp_path}/t.db" if scheme == "sqlite" else f"jsonl://{tmp_path}/j"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(GITHUB_OPS), url, durability],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert agent.stdout is not None
    first = agent.stdout.readline().split()
    assert first[0] == b"WRITER"
    writer, session_id = int(first[1]), first[2].decode()
    acknowledged = 0
    for _ in range(400):
        kind, value = agent.stdout.readline().split()
        if durability == "async" and kind == b"FLUSHED":
            acknowledged = int(value)
            if acknowledged > 100:
                break
        elif durability != "async":
            acknowledged = int(value)
    assert acknowledged > 0
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    agent.stdout.close()
    # The writer drains what it was handed, then exits: no orphan.
    assert _wait_gone(writer), "the writer process outlived its agent"
    store = open_store(url)
    events = store.read(session_id)
    store.close()
    assert verify_chain(events).valid
    # group: every acknowledged call; async: everything flushed (and what followed, shipped).
    assert len(events) >= acknowledged


# -- the child's loop, run in this process (its protocol, and for coverage) -----------------


def _serve_in_thread(url: str, parent: int) -> tuple[int, int, threading.Thread]:
    from cra_agents.trace._process import _serve

    inp_r, inp_w = os.pipe()
    out_r, out_w = os.pipe()

    def run() -> None:
        try:
            _serve(url, False, parent, inp_r, out_w)
        finally:
            os.close(inp_r)
            os.close(out_w)

    thread = threading.Thread(target=run)
    thread.start()
    return inp_w, out_r, thread


def test_the_child_seals_stores_and_acknowledges(tmp_path):
    from cra_agents.trace._process import _frame, _Frames, _write_all

    url = f"sqlite://{tmp_path}/t.db"
    inp, out, thread = _serve_in_thread(url, os.getppid())
    sid, tid = new_id(), new_id()
    chain = SessionChain(sid, tid)
    chain.append(ev.SESSION_STARTED, ev.session_started("a", "g"))
    chain.extend([(ev.POLICY_EVALUATED, ev.policy_evaluated("p", "allow", "x.y"))] * 2)
    _write_all(inp, _frame([(sid, tid, True, chain.take())]))
    chain.append(ev.SESSION_ENDED, ev.session_ended("completed", 1, 0, 0))
    _write_all(inp, _frame([(sid, tid, False, chain.take())]))
    os.close(inp)  # the agent is gone: the child finishes and exits
    thread.join(10)
    assert not thread.is_alive()
    frames = _Frames(out)
    acks = []
    while not frames.eof:
        frames.fill()
        acks.extend(frames.messages())
    os.close(out)
    assert acks[0][0] == "A"
    durable = [pair for _, (_, pairs, _) in acks for pair in pairs]
    assert durable[-1] == (sid, 3)
    watched = acks[0][1][2][sid]
    assert [f["sequence"] for f in watched] == [0, 1, 2]
    store = open_store(url)
    events = store.read(sid)
    store.close()
    assert [e.event_type for e in events][-1] == "session.ended"
    assert verify_chain(events).valid
    assert events[1].event_hash == watched[1]["event_hash"]


def test_the_child_stops_when_its_parent_is_gone(tmp_path):
    inp, out, thread = _serve_in_thread(f"jsonl://{tmp_path}/j", parent=-1)
    thread.join(5)  # nothing arrives; a second later it notices it was re-parented
    assert not thread.is_alive()
    os.close(inp)
    os.close(out)


def test_the_child_reports_a_store_it_cannot_open(tmp_path, monkeypatch):
    from cra_agents.trace import _process

    (tmp_path / "file").write_text("not a directory")
    inp_r, inp_w = os.pipe()
    out_r, out_w = os.pipe()
    stdin = type("In", (), {"buffer": os.fdopen(inp_r, "rb")})()
    stdout = type("Out", (), {"buffer": os.fdopen(out_w, "wb")})()
    monkeypatch.setattr(sys, "argv", ["-c", f"jsonl://{tmp_path}/file/j", "0", "1"])
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stdout", stdout)
    with pytest.raises(SystemExit) as info:
        _process.main()
    assert info.value.code == 1
    stdout.buffer.close()
    frames = _process._Frames(out_r)
    messages = []
    while not frames.eof:
        frames.fill()
        messages.extend(frames.messages())
    assert messages[0][0] == "E"
    assert "Error" in messages[0][1]
    stdin.buffer.close()
    os.close(inp_w)
    os.close(out_r)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_corrupt_frame_is_not_a_message():
    from cra_agents.trace._process import _Frames

    inp, out = os.pipe()
    os.write(out, (2**31).to_bytes(4, "little"))
    frames = _Frames(inp)
    frames.fill()
    with pytest.raises(ValueError, match="not a message"):
        frames.messages()
    os.close(inp)
    os.close(out)


SHARER = """
import sys, cra_agents as cra
rt = cra.Runtime([sys.argv[1]], store=sys.argv[2], durability="group", writer="process")
for _ in range(3):
    s = rt.create_session("sharer", "Share one store")
    for index in range(40):
        args = {"repo": "a/b", "path": str(index)}
        with rt.call("github.file.read", args, session_id=s.session_id):
            pass
    rt.end_session(s.session_id)
rt.close()
"""


@pytest.mark.parametrize("scheme", ["jsonl", "sqlite"])
def test_agent_processes_share_one_store(tmp_path, scheme):
    """Three agents, each with its writer process, on one store: every chain whole and valid."""
    url = f"sqlite://{tmp_path}/t.db" if scheme == "sqlite" else f"jsonl://{tmp_path}/j"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    agents = [
        subprocess.Popen([sys.executable, "-c", SHARER, str(GITHUB_OPS), url], env=env)
        for _ in range(3)
    ]
    assert [agent.wait(120) for agent in agents] == [0, 0, 0]
    store = open_store(url)
    sessions = store.sessions()
    assert len(sessions) == 9
    for session_id in sessions:
        events = store.read(session_id)
        assert verify_chain(events).valid
        assert events[-1].event_type == "session.ended"
        assert sum(e.event_type == "action.executed" for e in events) == 40
    store.close()


def test_a_writer_process_that_cannot_start_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    with pytest.raises(cra.ConfigurationError, match="writer='thread'") as info:
        cra.Runtime([GITHUB_OPS], store=f"jsonl://{tmp_path}/j", writer="process")
    assert info.value.details["reason"] == "writer_process_unavailable"


def test_a_forked_child_does_not_write_through_its_parents_writer(tmp_path):
    """After os.fork the copy of the runtime in the child refuses to record (fail closed),
    and the parent's writer keeps a clean stream."""
    runtime = cra.Runtime([GITHUB_OPS], store=f"jsonl://{tmp_path}/j", writer="process")
    session_id = runtime.create_session("bot", "Read files").session_id
    _call(runtime, session_id, "before.py")
    runtime.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked child reports through the pipe
        outcome = b"ran"
        try:
            _call(runtime, session_id, "child.py")
            runtime.flush()
            runtime._collector.check()
        except cra.TraceUnavailableError:
            outcome = b"refused"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            outcome = repr(exc).encode()
        os.write(write_end, outcome)
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as reader:
        outcome = reader.read()
    assert outcome == b"refused"
    _call(runtime, session_id, "after.py")  # the parent records on
    runtime.close()
    store = open_store(f"jsonl://{tmp_path}/j")
    events = store.read(session_id)
    store.close()
    assert verify_chain(events).valid
    assert sum(e.event_type == "action.executed" for e in events) == 2
