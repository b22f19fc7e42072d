"""The trace stream: WebSocket ``/v1/traces/stream`` against a real uvicorn and a real client.

Until the server's app factory is merged, the tests build the smallest app the router needs
(``app.state.runtime``, ``app.state.authenticate`` over API keys defined here, the router),
served by uvicorn on 127.0.0.1 in a thread, and drive it with the ``websockets`` client (and a
raw socket for the client that stops reading).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

import uvicorn
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from cra_agents import AuthenticationError, Runtime, TooManyRequestsError
from cra_agents.server import _stream
from cra_agents.server._principal import OWNER_KEY, Principal
from cra_agents.trace import verify_chain

KEYS = {
    "k-alice": Principal("key:alice", frozenset({"read", "write"})),
    "k-bob": Principal("key:bob", frozenset({"read", "write"})),
    "k-writer": Principal("key:alice", frozenset({"write"})),  # alice's, but no read scope
    "k-other-agent": Principal("key:alice", frozenset({"read"}), frozenset({"someone-else"})),
}
ALICE = {"X-API-Key": "k-alice"}


def authenticate(headers: Mapping[str, str]) -> Principal:
    """API keys from ``X-API-Key`` or ``Authorization: Bearer`` (what the test server knows)."""
    key = headers.get("x-api-key")
    bearer = headers.get("authorization", "")
    if key is None and bearer.lower().startswith("bearer "):
        key = bearer[7:].strip()
    if key == "k-limited":
        raise TooManyRequestsError("slow down", retry_after=1.0)
    principal = KEYS.get(key or "")
    if principal is None:
        raise AuthenticationError("a valid API key is required")
    return principal


class Server:
    """A real uvicorn serving ``app`` on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self.socket],), daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()

    def url(self, session_id: str | None = None, **query: Any) -> str:
        params = {"session_id": session_id, **query} if session_id is not None else query
        tail = "&".join(f"{k}={v}" for k, v in params.items())
        return f"ws://127.0.0.1:{self.port}/v1/traces/stream" + (f"?{tail}" if tail else "")


def make_app(runtime: Runtime, buffer: int | None = None) -> FastAPI:
    app = FastAPI()
    app.state.runtime = runtime
    app.state.authenticate = authenticate
    if buffer is not None:
        app.state.stream_buffer = buffer
        app.state.stream_stall_timeout = 0.5
    app.include_router(_stream.router)
    return app


@contextlib.contextmanager
def serving(runtime: Runtime, buffer: int | None = None) -> Iterator[Server]:
    with Server(make_app(runtime, buffer)) as server:
        yield server


def new_session(runtime: Runtime, owner: str = "key:alice", agent: str = "bot") -> str:
    return runtime.create_session(agent, "stream things", metadata={OWNER_KEY: owner}).session_id


def receive_all(ws: ClientConnection, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every message until the server closes."""
    out = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            out.append(json.loads(ws.recv(timeout=timeout)))
    return out


def close_of(ws: ClientConnection) -> tuple[int | None, str | None]:
    return ws.close_code, ws.close_reason


def check_stream(events: list[dict[str, Any]], first: int = 0) -> None:
    """Contiguous sequences from ``first``, no duplicates."""
    assert [e["sequence"] for e in events] == list(range(first, first + len(events)))


# -- streaming -------------------------------------------------------------------------------


def test_stored_then_live_events_then_close_when_the_session_ends() -> None:
    with Runtime(store="memory://") as runtime, serving(runtime) as server:
        sid = new_session(runtime)
        for i in range(5):
            runtime.record_event(sid, "test.before", {"i": i})
        runtime.flush()
        with connect(server.url(sid), additional_headers=ALICE) as ws:
            stored = [json.loads(ws.recv(timeout=10)) for _ in range(6)]
            check_stream(stored)
            assert stored[0]["event_type"] == "session.started"
            for i in range(3):
                runtime.record_event(sid, "test.live", {"i": i})
            live = [json.loads(ws.recv(timeout=10)) for _ in range(3)]
            assert [e["event_type"] for e in live] == ["test.live"] * 3
            runtime.end_session(sid)
            rest = receive_all(ws)
            assert close_of(ws) == (1000, "session ended")
        events = stored + live + rest
        check_stream(events)
        assert events[-1]["event_type"] == "session.ended"
        # The wire form is the stored event, exactly as the store returns it.
        wire = [e.model_dump(mode="json") for e in runtime.trace_events(sid)]
        assert events == wire
        assert verify_chain(events).valid


def test_bearer_token_and_resume_from_a_sequence() -> None:
    with Runtime(store="memory://") as runtime, serving(runtime) as server:
        sid = new_session(runtime)
        for i in range(10):
            runtime.record_event(sid, "test.step", {"i": i})
        headers = {"Authorization": "Bearer k-alice"}
        with connect(server.url(sid, since_sequence=6), additional_headers=headers) as ws:
            ws.send("what a client sends is ignored")
            resumed = [json.loads(ws.recv(timeout=10)) for _ in range(4)]
            check_stream(resumed, first=7)
            runtime.end_session(sid)
            assert [e["sequence"] for e in receive_all(ws)] == [11]
        # Resuming past session.ended: nothing left, closed at once; before it: the rest.
        with connect(server.url(sid, since_sequence=11), additional_headers=ALICE) as ws:
            assert receive_all(ws) == []
            assert close_of(ws) == (1000, "session ended")
        with connect(server.url(sid, since_sequence=-5), additional_headers=ALICE) as ws:
            check_stream(receive_all(ws))


@pytest.mark.parametrize(
    ("store", "writer", "durability"),
    [
        ("sqlite", "process", "async"),
        ("sqlite", "process", "group"),
        ("jsonl", "process", "sync"),
        ("jsonl", "thread", "group"),
        ("sqlite", "thread", "sync"),
        ("memory", "thread", "async"),
    ],
)
def test_every_writer_and_durability_streams_without_gaps(
    tmp_path: Path, store: str, writer: Any, durability: Any
) -> None:
    url = {
        "sqlite": f"sqlite://{tmp_path / 'traces.db'}",
        "jsonl": f"jsonl://{tmp_path / 'traces'}",
        "memory": "memory://",
    }[store]
    total = 400
    with (
        Runtime(store=url, writer=writer, durability=durability) as runtime,
        serving(runtime) as server,
    ):
        assert (runtime._collector.writer_pid is not None) == (writer == "process")
        sid = new_session(runtime)
        for i in range(50):
            runtime.record_event(sid, "test.early", {"i": i})
        with connect(server.url(sid), additional_headers=ALICE) as ws:
            # Writers on two threads while the stream reads: resume and live interleave.
            def write(tag: str) -> None:
                for i in range(total // 2):
                    runtime.record_event(sid, f"test.{tag}", {"i": i})

            threads = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            runtime.end_session(sid)
            events = receive_all(ws)
            assert close_of(ws) == (1000, "session ended")
        check_stream(events)
        assert len(events) == 1 + 50 + total + 1
        assert verify_chain(events).valid
        assert events == [e.model_dump(mode="json") for e in runtime.trace_events(sid)]


def test_many_clients_on_one_session_and_many_sessions() -> None:
    with Runtime(store="memory://") as runtime, serving(runtime) as server:
        sessions = [new_session(runtime) for _ in range(4)]
        results: dict[tuple[str, int], list[dict[str, Any]]] = {}

        def follow(sid: str, n: int, ready: threading.Barrier) -> None:
            with connect(server.url(sid), additional_headers=ALICE) as ws:
                first = json.loads(ws.recv(timeout=10))
                ready.wait()
                results[sid, n] = [first, *receive_all(ws)]

        ready = threading.Barrier(4 * 3 + 1)
        clients = [
            threading.Thread(target=follow, args=(sid, n, ready))
            for sid in sessions
            for n in range(3)
        ]
        for client in clients:
            client.start()
        ready.wait(timeout=20)
        for round_ in range(100):
            for sid in sessions:
                runtime.record_event(sid, "test.round", {"round": round_})
        for sid in sessions:
            runtime.end_session(sid)
        for client in clients:
            client.join(30)
        assert len(results) == 12
        for (sid, _), events in results.items():
            check_stream(events)
            assert len(events) == 102
            assert {e["session_id"] for e in events} == {sid}
        deadline = time.monotonic() + 10
        while _stream.stats.open:  # the handlers finish just after their clients
            assert time.monotonic() < deadline
            time.sleep(0.01)


# -- refusals --------------------------------------------------------------------------------


def refused(server: Server, url: str, headers: dict[str, str] | None = None) -> Any:
    with connect(url, additional_headers=headers or {"X-Request-ID": "req-1"}) as ws:
        messages = receive_all(ws)
        return close_of(ws), messages


def test_refusals_close_with_a_code_a_reason_and_the_error_body() -> None:
    with Runtime(store="memory://") as runtime, serving(runtime) as server:
        mine = new_session(runtime)
        bobs = new_session(runtime, owner="key:bob")
        (code, reason), body = refused(server, server.url(mine))
        assert (code, reason.split(":")[0]) == (1008, "UNAUTHORIZED")
        assert body[0]["error"]["code"] == "UNAUTHORIZED"
        assert body[0]["error"]["request_id"] == "req-1"
        for key, sid in [
            ("k-alice", bobs),  # another principal's session
            ("k-writer", mine),  # no read scope
            ("k-other-agent", mine),  # may not act as the session's agent
            ("k-alice", "0193a5b0-7c1a-7000-8000-000000000000"),  # unknown
            ("k-alice", "not-a-session"),
        ]:
            (code, reason), body = refused(server, server.url(sid), {"X-API-Key": key})
            assert code == 1008
            assert reason.startswith("SESSION_NOT_FOUND"), (key, sid)
            assert body[0]["error"]["code"] == "SESSION_NOT_FOUND"
        (code, reason), body = refused(server, server.url(), ALICE)
        assert code == 1008
        assert "session_id" in reason
        (code, reason), body = refused(server, server.url(mine, since_sequence="x"), ALICE)
        assert code == 1008
        assert "since_sequence" in body[0]["error"]["message"]
        (code, reason), _ = refused(server, server.url(mine), {"X-API-Key": "k-limited"})
        assert (code, reason.split(":")[0]) == (1013, "TOO_MANY_REQUESTS")


# -- the end of recording --------------------------------------------------------------------


def test_runtime_close_ends_the_stream_with_1001() -> None:
    runtime = Runtime(store="memory://")
    with serving(runtime) as server:
        sid = new_session(runtime)
        with connect(server.url(sid), additional_headers=ALICE) as ws:
            assert json.loads(ws.recv(timeout=10))["sequence"] == 0
            runtime.close()
            assert receive_all(ws) == []
            assert close_of(ws) == (1001, "runtime closed")


class _FailingStore:
    """A memory store whose appends fail once ``broken`` is set."""

    def __init__(self) -> None:
        from cra_agents.trace import MemoryStore

        self.inner = MemoryStore()
        self.broken = False

    def append(self, events: Any) -> None:
        if self.broken:
            raise OSError("disk full")
        self.inner.append(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_trace_failure_ends_the_stream_with_1011() -> None:
    store = _FailingStore()
    runtime = Runtime(store=store)
    try:
        with serving(runtime) as server:
            sid = new_session(runtime)
            with connect(server.url(sid), additional_headers=ALICE) as ws:
                assert json.loads(ws.recv(timeout=10))["sequence"] == 0
                store.broken = True
                runtime.record_event(sid, "test.lost", {})
                assert receive_all(ws) == []
                assert close_of(ws) == (1011, "trace unavailable")
    finally:
        with contextlib.suppress(Exception):
            runtime.close()


def test_a_store_that_cannot_be_read_ends_the_stream_with_1011(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Runtime(store="memory://") as runtime, serving(runtime) as server:
        sid = new_session(runtime)

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise OSError("unreadable")

        monkeypatch.setattr(runtime.store, "read", broken)
        with connect(server.url(sid), additional_headers=ALICE) as ws:
            assert receive_all(ws) == []
            assert close_of(ws) == (1011, "trace unavailable")


def test_a_client_that_leaves_is_forgotten() -> None:
    with Runtime(store="memory://") as runtime, serving(runtime) as server:
        sid = new_session(runtime)
        with connect(server.url(sid), additional_headers=ALICE) as ws:
            ws.recv(timeout=10)
        deadline = time.monotonic() + 10
        while _stream.stats.open or runtime._collector.feed.listeners:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        runtime.record_event(sid, "test.after", {})
        runtime.flush()


# -- backpressure ------------------------------------------------------------------------------


class RawClient:
    """A WebSocket client on a raw socket with a tiny receive buffer, that reads when told."""

    def __init__(self, port: int, path: str, headers: Mapping[str, str]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.data = b""
        while b"\r\n\r\n" not in self.data:
            self.data += self.sock.recv(4096)
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()  # noqa: S324
        )
        assert accept in head

    def _need(self, n: int) -> bytes:
        while len(self.data) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.data += chunk
        out, self.data = self.data[:n], self.data[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame (the server does not fragment or mask)."""
        first, second = self._need(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._need(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._need(8))
        return first & 0x0F, self._need(size)


def test_a_client_that_stops_reading_is_cut_off_and_memory_stays_bounded() -> None:
    capacity = 64
    total = 20_000
    with (
        contextlib.ExitStack() as stack,
        Runtime(store="memory://") as runtime,
        serving(runtime, buffer=capacity) as server,
    ):
        sid = new_session(runtime)
        before = _stream.stats.too_slow
        _stream.stats.peak_buffered = 0
        path = f"/v1/traces/stream?session_id={sid}"
        client = RawClient(server.port, path, ALICE)
        stack.callback(client.sock.close)
        # The client reads nothing while 20,000 events (about 12 MB of JSON) are stored.
        payload = {"blob": "x" * 400}
        for _ in range(total):
            runtime.record_event(sid, "test.flood", payload)
        deadline = time.monotonic() + 30
        while _stream.stats.too_slow == before:
            assert time.monotonic() < deadline, "the slow client was never cut off"
            time.sleep(0.05)
        runtime.flush()
        assert _stream.stats.too_slow == before + 1
        # Bounded: the per-client buffer never held more than its capacity.
        assert _stream.stats.peak_buffered <= capacity
        # ... nor did uvicorn's transport buffer grow past its high-water mark (64 KiB) and a
        # message: what a client does not read stays in the kernel's socket buffers.
        buffered = [
            conn.transport.get_write_buffer_size()
            for conn in server.server.server_state.connections
        ]
        assert buffered
        assert max(buffered) <= 128 * 1024
        print(
            f"stored {runtime.session(sid).event_count}, peak buffer {_stream.stats.peak_buffered}"
            f", transport buffers {buffered}",
            end=" ",
        )
        # The client now reads: what the socket buffers held, then the close frame 1013.
        received = 0
        opcode, body = client.frame()
        while opcode == 0x1:
            received += 1
            opcode, body = client.frame()
        assert opcode == 0x8
        assert struct.unpack("!H", body[:2])[0] == 1013
        assert body[2:] == b"too slow"
        stored = runtime.session(sid).event_count
        # Far fewer than stored reached the client: the rest was never queued for it.
        assert received < stored
        assert received <= capacity + (16 << 20) // 400
        print(f"received before the close {received}")
        # The stream let go of the session; the runtime goes on recording.
        deadline = time.monotonic() + 10
        while runtime._collector.feed.listeners:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_an_unsubscribed_listener_costs_nothing_and_errors_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cra_agents.trace import CommitFeed

    feed = CommitFeed()
    heard: list[int | None] = []

    def bad(sequence: int | None) -> None:
        raise RuntimeError("boom")

    stop_a = feed.subscribe("a", heard.append)
    stop_bad = feed.subscribe("a", bad)
    feed.publish([("a", 3), ("b", 9)])
    assert heard == [3]
    assert "listener failed" in caplog.text
    stop_bad()
    stop_bad()
    stop_a()
    assert feed.listeners == {}
    feed.subscribe("a", heard.append)
    feed.stop()
    assert heard == [3, None]
    assert feed.listeners == {}
    feed.subscribe("b", heard.append)  # after the stop: told at once
    assert heard == [3, None, None]


def test_a_client_behind_a_burst_catches_up_from_the_store() -> None:
    """A small buffer holds back nobody who reads: the store is the backlog, not memory."""
    with Runtime(store="memory://") as runtime, serving(runtime, buffer=8) as server:
        sid = new_session(runtime)
        before = _stream.stats.too_slow
        for i in range(3000):
            runtime.record_event(sid, "test.burst", {"i": i})
        with connect(server.url(sid), additional_headers=ALICE) as ws:
            for i in range(3000):
                runtime.record_event(sid, "test.live", {"i": i})
            runtime.end_session(sid)
            events = receive_all(ws)
            assert close_of(ws) == (1000, "session ended")
        check_stream(events)
        assert len(events) == 6002
        assert _stream.stats.too_slow == before
