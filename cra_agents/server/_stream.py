"""The trace stream: WebSocket ``/v1/traces/stream`` (CRA-Full, upstream PROTOCOL §6.4).

``GET /v1/traces/stream?session_id=ID&since_sequence=N`` (WebSocket upgrade), with the same
credentials as every other route (``X-API-Key`` or ``Authorization: Bearer``; ``read`` scope;
the session must belong to the caller). Each text message is one TRACE event of the session,
the JSON object ``GET /v1/traces/{session_id}`` returns for it (the stored form: hashed, as
``Runtime.trace_events`` reads it), in sequence order, without gaps or duplicates:

1. first the events already stored whose sequence is greater than ``since_sequence`` (all of
   them without it): a client that lost its connection resumes with the last sequence it got;
2. then each event as soon as it is stored (after the writer's sync in ``group`` and ``sync``
   durability; within the ``async`` flush interval otherwise), whichever writer (thread or
   writer process) stored it;
3. after ``session.ended`` the server closes with code 1000, reason ``session ended`` (at
   once when the client resumes past it).

How the stream learns of stored events: it subscribes to the session with
:meth:`Runtime.watch_commits <cra_agents.runtime.Runtime.watch_commits>` (the trace collector
announces, per written batch, the highest stored sequence of each session somebody listens
to), *then* reads back what is stored from its cursor. An event stored before a read is in the
read, one stored after it is announced: nothing falls between. Reads go to the store by
sequence (``store.read(session_id, since_sequence=cursor, limit=256)``) in a worker thread;
announcements that arrive while a read is pending are folded into one.

Close codes (a refusal first accepts the handshake, sends the error body of the HTTP API,
``{"error": {code, message, category, recoverable, request_id}}``, and closes, so that every
WebSocket client can read why; messages are TRACE events otherwise):

======  =======================================  ==============================================
code    reason                                   when
======  =======================================  ==============================================
1000    ``session ended``                        ``session.ended`` was sent
1001    ``runtime closed``                       the runtime stopped recording (shutdown)
1008    ``UNAUTHORIZED: ...``                    no valid credential
1008    ``SESSION_NOT_FOUND: ...``               unknown session, not the caller's, or a
                                                 credential without ``read`` scope
1008    ``INVALID_CARP_REQUEST: ...``            ``session_id`` missing, ``since_sequence``
                                                 not an integer
1011    ``trace unavailable``                    the trace failed, or the store cannot be read
1013    ``too slow``                             the client does not read fast enough
1013    ``TOO_MANY_REQUESTS: ...``               the authenticator refused for the rate
======  =======================================  ==============================================

Backpressure: each client has a buffer of at most ``app.state.stream_buffer`` encoded events
(default 1024), filled from the store only as far as it has room: the store, not memory, holds
the backlog of a client that lags. The sender writes the buffer to the socket, waiting whenever
the server's transport buffer is full (uvicorn pauses writers above its high-water mark,
64 KiB). A buffer that stays full for ``app.state.stream_stall_timeout`` seconds (default 5)
means the client stopped reading: it is disconnected with 1013 ``too slow`` (the close frame
waits at most 5 s behind what is already in the socket buffers) and resumes, when it comes
back, with ``since_sequence``. A client that reads slower than events are stored, but reads,
falls behind and catches up from the store. The server's memory per client is bounded by the
buffer, the transport's high-water mark and the kernel's socket buffer, however many events
are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from cra_agents._exceptions import (
    AuthenticationError,
    CRAError,
    ForbiddenError,
    InvalidRequestError,
    SessionNotFoundError,
    TooManyRequestsError,
)
from cra_agents._ids import new_id
from cra_agents.protocol import events as ev
from cra_agents.server._principal import owns

if TYPE_CHECKING:
    from cra_agents.protocol import TraceEvent
    from cra_agents.runtime import Runtime

__all__ = ["DEFAULT_BUFFER", "DEFAULT_STALL_TIMEOUT", "StreamStats", "router", "stats"]

logger = logging.getLogger(__name__)

router = APIRouter()

#: Events a client may have waiting to be sent (``app.state.stream_buffer``).
DEFAULT_BUFFER = 1024
#: Seconds a full buffer may wait for the client before it is cut off
#: (``app.state.stream_stall_timeout``).
DEFAULT_STALL_TIMEOUT = 5.0
_PAGE = 256  # events read from the store at a time
_CLOSE_TIMEOUT = 5.0  # longest a close frame may wait behind unread data
_MAX_REASON = 123  # bytes a close frame's reason may hold (RFC 6455 §5.5)

# Why a stream ends: (close code, reason).
_ENDED = (1000, "session ended")
_GOING_AWAY = (1001, "runtime closed")
_UNAVAILABLE = (1011, "trace unavailable")
_TOO_SLOW = (1013, "too slow")


@dataclass(slots=True)
class StreamStats:
    """Counters of the trace streams of this process (for tests, health and benchmarks)."""

    #: Streams open now.
    open: int = 0
    #: Streams accepted since start.
    opened: int = 0
    #: Clients cut off with 1013 ``too slow``.
    too_slow: int = 0
    #: Events sent.
    sent: int = 0
    #: The most events any client had waiting in its buffer.
    peak_buffered: int = 0


#: The counters of every stream of this process.
stats = StreamStats()


@router.websocket("/v1/traces/stream")
async def trace_stream(websocket: WebSocket) -> None:
    """Stream a session's TRACE events as they are stored (see the module docstring)."""
    request_id = websocket.headers.get("x-request-id") or new_id()
    try:
        runtime, session_id, since = await run_in_threadpool(_admit, websocket)
    except CRAError as exc:
        await _refuse(websocket, exc, request_id)
        return
    state = websocket.app.state
    capacity = int(getattr(state, "stream_buffer", DEFAULT_BUFFER))
    stall = float(getattr(state, "stream_stall_timeout", DEFAULT_STALL_TIMEOUT))
    await websocket.accept(headers=[(b"x-request-id", request_id.encode())])
    await _Stream(websocket, runtime, session_id, since, capacity, stall).run()


def _admit(websocket: WebSocket) -> tuple[Runtime, str, int]:
    """Authenticate and authorise the handshake; the runtime, session id and cursor.

    Raises:
        CRAError: what the client is told before the socket closes.
    """
    headers = {name.lower(): value for name, value in websocket.headers.items()}
    principal = websocket.app.state.authenticate(headers)
    query = websocket.query_params
    session_id = query.get("session_id")
    if not session_id:
        raise InvalidRequestError(
            "the query parameter session_id is required",
            details={"reason": "query", "parameter": "session_id"},
        )
    raw = query.get("since_sequence")
    try:
        since = -1 if raw is None else max(int(raw), -1)
    except ValueError:
        raise InvalidRequestError(
            f"since_sequence must be an integer, not {raw!r}",
            details={"reason": "query", "parameter": "since_sequence"},
        ) from None
    runtime: Runtime = websocket.app.state.runtime
    # Not readable and not the caller's both look like "no such session": nothing leaks.
    try:
        principal.require("read")
        info = runtime.session(session_id)
        principal.require("read", agent_id=info.agent_id)
    except (ForbiddenError, SessionNotFoundError):
        raise SessionNotFoundError(f"no session {session_id}") from None
    if not owns(principal, info.metadata):
        raise SessionNotFoundError(f"no session {session_id}")
    return runtime, session_id, since


async def _refuse(websocket: WebSocket, exc: CRAError, request_id: str) -> None:
    """Accept, send the error body and close with 1008 (1013 for a rate limit)."""
    code = 1013 if isinstance(exc, TooManyRequestsError) else 1008
    if not isinstance(exc, AuthenticationError | SessionNotFoundError | InvalidRequestError):
        logger.info("trace stream refused: %s", exc.code)
    reason = f"{exc.code}: {exc.message}".encode()[:_MAX_REASON].decode(errors="ignore")
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
        await websocket.accept(headers=[(b"x-request-id", request_id.encode())])
        await websocket.send_text(orjson.dumps(exc.to_error_response(request_id)).decode())
        await websocket.close(code, reason)


class _Stream:
    """One client's stream: a reader of the store, a bounded buffer and a sender."""

    def __init__(
        self,
        websocket: WebSocket,
        runtime: Runtime,
        session_id: str,
        since: int,
        capacity: int,
        stall_timeout: float,
    ) -> None:
        self.websocket = websocket
        self.runtime = runtime
        self.session_id = session_id
        self.cursor = since  # the last sequence put in the buffer
        self.capacity = max(capacity, 1)
        self.loop = asyncio.get_running_loop()
        self.buffer: deque[str] = deque()
        self.ready = asyncio.Event()  # the buffer has something, or the end is set
        self.room = asyncio.Event()  # the sender took an event out of the buffer
        self.stall_timeout = stall_timeout
        self.end: tuple[int, str] | None = None  # set once the buffer holds the last event
        self.wake = asyncio.Event()  # events were stored (or recording stopped)
        self.scheduled = False  # a wake-up is on its way to the loop
        self.stopped = False  # recording stopped: no announcement will follow

    # -- announcements (the writer's thread) ------------------------------------------------

    def announce(self, sequence: int | None) -> None:
        """The collector stored events of the session (``None``: recording stopped)."""
        if sequence is None:
            self.stopped = True
        if not self.scheduled:
            self.scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.scheduled = False  # before the read the wake-up causes: later news re-schedule
        self.wake.set()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        stats.open += 1
        stats.opened += 1
        pump = asyncio.create_task(self._pump())
        sender = asyncio.create_task(self._send())
        listener = asyncio.create_task(self._listen())
        try:
            await asyncio.wait({pump, listener}, return_when=asyncio.FIRST_COMPLETED)
            if listener.done():  # the client went away (or closed)
                return
            end = pump.result()
            if end == _TOO_SLOW:
                stats.too_slow += 1
                logger.warning(
                    "trace stream of session %s: client too slow (%d events waiting), closing",
                    self.session_id,
                    len(self.buffer),
                )
                sender.cancel()
                self.buffer.clear()
            else:
                self.end = end
                self.ready.set()
                await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
                if listener.done() or sender.exception() is not None:
                    return  # pragma: no cover - the client left while the last events went
            await self._close(*end)
        finally:
            stats.open -= 1
            for task in (pump, sender, listener):
                task.cancel()
            await asyncio.gather(pump, sender, listener, return_exceptions=True)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError, TimeoutError):
            await asyncio.wait_for(self.websocket.close(code, reason), _CLOSE_TIMEOUT)

    async def _listen(self) -> None:
        """Wait for the client to go away; what it sends is ignored."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    async def _send(self) -> None:
        """Send the buffer's events in order; return once the end is reached and sent."""
        buffer, ready, send = self.buffer, self.ready, self.websocket.send_text
        while True:
            if not buffer:
                if self.end is not None:
                    return
                ready.clear()
                await ready.wait()
                continue
            await send(buffer.popleft())
            self.room.set()
            stats.sent += 1

    async def _pump(self) -> tuple[int, str]:
        """Fill the buffer from the store as events are stored; why the stream ends."""
        unsubscribe = self.runtime.watch_commits(self.session_id, self.announce)
        try:
            first = True
            while True:
                stopped = self.stopped  # before the read: what was stored before it is read
                try:
                    end = await self._drain()
                    if end is None and first:
                        end = await run_in_threadpool(self._ended_before)
                except Exception:
                    logger.exception("trace stream of session %s: reading failed", self.session_id)
                    return _UNAVAILABLE
                if end is not None:
                    return end
                if stopped:
                    return _UNAVAILABLE if self.runtime.trace_failure is not None else _GOING_AWAY
                first = False
                await self.wake.wait()
                self.wake.clear()
        finally:
            unsubscribe()

    async def _drain(self) -> tuple[int, str] | None:
        """Buffer every stored event after the cursor; the end, if reached (or too slow).

        Reads only what the buffer has room for: the store is the backlog of a client that
        lags, so it costs no memory here. A buffer that stays full for the stall timeout
        means the client stopped reading: too slow.
        """
        while True:
            if len(self.buffer) >= self.capacity:
                self.room.clear()
                try:
                    await asyncio.wait_for(self.room.wait(), self.stall_timeout)
                except TimeoutError:
                    return _TOO_SLOW
            limit = min(_PAGE, self.capacity - len(self.buffer))
            events = await run_in_threadpool(self._read, limit)
            for event in events:
                if event.sequence <= self.cursor:
                    continue  # pragma: no cover - the store reads after the cursor
                if event.sequence != self.cursor + 1:  # pragma: no cover - stores have no gaps
                    logger.error(
                        "trace stream of session %s: sequence %d follows %d",
                        self.session_id,
                        event.sequence,
                        self.cursor,
                    )
                    return _UNAVAILABLE
                self.buffer.append(_wire(event))
                self.cursor = event.sequence
                stats.peak_buffered = max(stats.peak_buffered, len(self.buffer))
                self.ready.set()
                if event.event_type == ev.SESSION_ENDED:
                    return _ENDED
            if len(events) < limit:
                return None

    def _read(self, limit: int) -> list[TraceEvent]:
        return self.runtime.store.read(self.session_id, since_sequence=self.cursor, limit=limit)

    def _ended_before(self) -> tuple[int, str] | None:
        """``_ENDED`` when the client resumed past the stored ``session.ended``."""
        if self.runtime.session(self.session_id).active:
            return None
        ended = self.runtime.store.read(
            self.session_id, event_type=ev.SESSION_ENDED, since_sequence=-1, limit=1
        )
        return _ENDED if ended and ended[0].sequence <= self.cursor else None


def _wire(event: TraceEvent) -> str:
    """The event as the HTTP API returns it (its stored JSON: fields in the spec's order)."""
    fields: dict[str, Any] = event.__dict__
    return orjson.dumps(fields).decode()
