"""A close that runs on the trace writer's own thread (a finalizer run by garbage collection
there, or a commit listener) closes from another thread: no self-join, no deadlock."""

from __future__ import annotations

import threading
import time

import cra_agents as cra
from cra_agents.examples import atlas_path


def test_close_on_the_writer_thread_hands_over_and_completes(tmp_path):
    runtime = cra.Runtime([atlas_path("github-ops")], store=f"jsonl://{tmp_path}", writer="thread")
    collector = runtime._collector
    session = runtime.create_session("bot", "close from the writer")
    seen: list[str] = []

    def close_from_the_writer(sequence: int | None) -> None:
        seen.append(threading.current_thread().name)
        if sequence is not None:
            collector.close()  # what a finalizer running here would do

    runtime.watch_commits(session.session_id, close_from_the_writer)
    runtime.record_event(session.session_id, "x.test", {"n": 1})
    deadline = time.monotonic() + 10
    while not collector.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert collector.closed
    assert seen[0] == "cra-trace-writer"
    runtime.close()
    events = list(cra.trace.read_events(next(tmp_path.glob("*.trace.jsonl"))))
    assert [e["event_type"] for e in events] == ["session.started", "x.test"]
