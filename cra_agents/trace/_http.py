"""The HTTP trace sink: events spooled to local disk, then sent to an ingest server in order.

``Runtime(store="http://127.0.0.1:8420?spool=.cra/spool", durability="group")`` records through
:class:`HttpSink` (see :func:`sink_from_url` for the URL's options; the API key comes from
``CRA_INGEST_API_KEY`` or ``CRA_API_KEY``, never from the URL).

**Local durability first.** The runtime's writer thread calls :meth:`HttpSink.append` (the
events' stored lines go to the open segment of the spool, :mod:`cra_agents.trace._spool`) and
:meth:`HttpSink.sync` (flush, and fsync when the store is durable: ``group``/``sync``). So an
event acknowledged to the caller is on local disk before the call returns, whether or not the
ingest is up. The sink runs in the writer *thread*: ``writer="process"`` is refused for it
(:func:`~cra_agents.trace.writer_url`).

**Delivery.** One sender thread seals the open segment when it has nothing older to send
(after ``linger`` seconds, so a busy agent's events travel together), and sends sealed segments
strictly oldest first, each as one or more JSONL batches (zstd-compressed unless
``compression="identity"``) to ``POST /v1/ingest/batch``; a segment is deleted only after the
ingest answered 200 for all of it. Batches of a session therefore arrive in sequence order, as
the ingest requires (it refuses a gap); a resent batch is answered as duplicates, so delivery is
at least once on the wire and exactly once in the store.

**Failures.** Connection refused, a timeout (a stopped server accepts the connection and never
answers: ``read_timeout``), 5xx: retried with exponential backoff and full jitter up to
``max_backoff``; 429: after ``Retry-After``; 401/403/404/415/501 (a configuration error): kept
and retried every ``max_backoff`` seconds, reported in :meth:`HttpSink.stats`. 400 and 409 (the
batch can never be taken: invalid, or it breaks the stored chain): the segment moves to the
spool's ``rejected/`` folder with the server's error beside it, is counted and logged as an
error, never deleted. A 413 halves the batch; a single event too large is rejected likewise.

**Bounded.** When the spool holds ``max_spool_bytes``, :meth:`HttpSink.append` raises
:class:`~cra_agents.TraceUnavailableError` saying since when the ingest has been unreachable and
how full the spool is; the runtime then refuses what needs an audit record (fail closed). No
event is ever dropped.

**Restart.** One process per spool directory (an ``flock``; a second one is refused). A sink
that starts on a spool an earlier process left (a crash, a kill -9) cuts torn last lines (never
acknowledged) and sends what is there first, in order.

**Close.** :meth:`HttpSink.close` seals the open segment and tries to deliver the spool for up
to ``drain_timeout`` seconds; what is left stays in the spool for the next process. It never
waits longer, whatever the ingest does.

**Reads.** The ingest server is the record; this sink answers :meth:`~HttpSink.read`,
:meth:`~HttpSink.last_sequence` and :meth:`~HttpSink.sessions` from what *this process*
appended: the last sequence of every session it wrote, and the events of the most recent
sessions up to ``mirror_events`` events (older sessions' events read as ``[]``). Sessions
written by other processes, or before a restart, are read on the ingest server's store.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

import httpx

from cra_agents._clock import format_timestamp
from cra_agents._exceptions import ConfigurationError, MissingDependencyError, TraceUnavailableError
from cra_agents._retry import backoff_delay, retry_after_seconds
from cra_agents.trace._jsonl import event_line
from cra_agents.trace._spool import Spool, SpoolFullError

if TYPE_CHECKING:
    from cra_agents.protocol import TraceEvent

__all__ = ["DEFAULT_SPOOL", "INGEST_PATH", "HttpSink", "SinkStats", "sink_from_url"]

logger = logging.getLogger(__name__)

#: Where a sink spools when the URL names no ``spool``.
DEFAULT_SPOOL: Final = ".cra/spool"
#: The ingest route, relative to the sink's base URL.
INGEST_PATH: Final = "/v1/ingest/batch"
_MIB = 1024 * 1024
#: Statuses that mean the batch itself can never be taken: dead-lettered.
_REJECTED = frozenset((400, 409, 422))

Compression = Literal["zstd", "identity"]


@dataclass(frozen=True, slots=True)
class SinkStats:
    """What the HTTP sink has done so far (see :meth:`HttpSink.stats`)."""

    #: The ingest's base URL.
    url: str
    #: The spool directory.
    spool: str
    #: Bytes waiting in the spool, and its bound.
    spool_bytes: int
    max_spool_bytes: int
    #: Segment files waiting.
    segments: int
    #: Batches the ingest answered 200 for, their events, and of those the ones it had already.
    batches_sent: int
    events_sent: int
    duplicates: int
    #: Failed attempts (each was retried or its segment rejected).
    retries: int
    #: Segments moved to ``rejected/`` (the ingest refused them for good), and their events.
    rejected_segments: int
    #: Bytes sent on the wire (compressed) and before compression, for the batches sent.
    wire_bytes: int
    raw_bytes: int
    #: Unix time of the last 200, None before the first.
    last_success_ts: float | None
    #: Unix time since which every attempt failed, None while the ingest takes batches.
    failing_since: float | None
    #: The last failure, None before any.
    last_error: str | None
    #: Round-trip time of the recent batches sent (the last 10,000), in milliseconds.
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    #: Bytes of torn last lines cut from the spool an earlier process left (never acknowledged).
    torn_bytes: int
    #: Events dropped: always 0 (a full spool refuses events instead).
    dropped_total: int = 0


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class _Outcome:
    OK = "ok"
    TOO_LARGE = "too_large"
    REJECTED = "rejected"
    ABORTED = "aborted"


class HttpSink:
    """A :class:`~cra_agents.trace.TraceStore` that spools locally and sends to an ingest server.

    See the module docstring for what it guarantees.

    Args:
        url: The ingest server's base URL (``http://host:port``, ``https://...``).
        spool: The spool directory (one process at a time).
        api_key: Sent as ``X-API-Key`` (a key with the ``ingest`` scope).
        max_spool_bytes: The spool's bound; appends past it are refused.
        segment_bytes: A segment is sealed at this size.
        batch_events: The most events a batch holds.
        batch_bytes: The most bytes (before compression) a batch holds.
        compression: ``zstd`` (needs ``pip install 'cra-agents[sink]'``) or ``identity``.
        connect_timeout: Seconds to connect.
        read_timeout: Seconds to wait for the answer (a stopped server never answers).
        backoff: First retry delay in seconds; doubled each retry, full jitter.
        max_backoff: The longest retry delay.
        durable: fsync the spool at each :meth:`sync` (``group``/``sync`` durability).
        drain_timeout: Seconds :meth:`close` tries to deliver the spool.
        linger: Seconds the sender lets events gather before sealing the open segment.
        mirror_events: Events of recent sessions kept in memory for reads.
        transport: An httpx transport (tests).

    Raises:
        ConfigurationError: the spool is held by another process or cannot be created.
        MissingDependencyError: ``zstd`` compression without the ``zstandard`` package.
    """

    def __init__(
        self,
        url: str,
        *,
        spool: str | os.PathLike[str] = DEFAULT_SPOOL,
        api_key: str | None = None,
        max_spool_bytes: int = 256 * _MIB,
        segment_bytes: int = 4 * _MIB,
        batch_events: int = 2000,
        batch_bytes: int = 4 * _MIB,
        compression: Compression = "zstd",
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        backoff: float = 0.1,
        max_backoff: float = 30.0,
        durable: bool = True,
        drain_timeout: float = 2.0,
        linger: float = 0.02,
        mirror_events: int = 20_000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if compression not in ("zstd", "identity"):
            raise ConfigurationError(
                f"compression must be zstd or identity, not {compression!r}",
                details={"reason": "bad_store_option", "option": "compression"},
            )
        self._compressor: Any = None
        if compression == "zstd":
            try:
                import zstandard
            except ImportError as exc:
                raise MissingDependencyError(
                    "compressing trace batches with zstd (or use ?compression=identity)",
                    package="zstandard",
                    extra="sink",
                ) from exc
            self._compressor = zstandard.ZstdCompressor(level=3)
        self.url = url.rstrip("/")
        self.compression: Compression = compression
        self.batch_events = max(int(batch_events), 1)
        self.batch_bytes = max(int(batch_bytes), 1)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.drain_timeout = drain_timeout
        self.linger = linger
        self.mirror_events = mirror_events
        self._spool = Spool(
            spool, max_bytes=max_spool_bytes, segment_bytes=segment_bytes, durable=durable
        )
        headers = {"content-type": "application/x-ndjson", "accept": "application/json"}
        if compression == "zstd":
            headers["content-encoding"] = "zstd"
        if api_key:
            headers["x-api-key"] = api_key
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport,
        )
        # One lock for the spool and the sender's state; readers have their own.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._read_lock = threading.Lock()
        self._mirror: dict[str, list[TraceEvent]] = {}
        self._mirrored = 0
        self._last: dict[str, int] = {}
        self._closed = False
        self._closing = False
        self._deadline = math.inf
        self._stop = threading.Event()
        self._sender_done = False
        self._sender_closes = False
        self._sending = False
        # Counters (written by the sender thread, read by stats()).
        self._batches = self._events = self._duplicates = self._retries = 0
        self._rejected = self._wire = self._raw = 0
        self._last_success: float | None = None
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._latencies: deque[float] = deque(maxlen=10_000)
        self._thread = threading.Thread(target=self._run, name="cra-trace-http-sink", daemon=True)
        self._thread.start()

    # -- the TraceStore interface ----------------------------------------------------------

    def append(self, events: Sequence[TraceEvent]) -> None:
        """Append one session's events to the spool (durable at the next :meth:`sync`).

        Raises:
            ValueError: the sink is closed.
            TraceUnavailableError: the spool is full (reason ``spool_full``).
        """
        if not events:
            return
        data = b"".join(event_line(event) for event in events)
        with self._lock:
            if self._closed:
                raise ValueError("store is closed")
            try:
                self._spool.append(data)
            except SpoolFullError:
                raise self._full(len(data)) from None
        self._remember(events)

    def sync(self) -> None:
        """Make the spooled events durable (fsync when durable) and wake the sender."""
        with self._cond:
            self._spool.sync()
            self._cond.notify_all()

    def read(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Events of a session this process appended, while kept (see the module docstring)."""
        with self._read_lock:
            events = list(self._mirror.get(session_id, ()))
        out = [
            e
            for e in events
            if (event_type is None or e.event_type == event_type)
            and (since_sequence is None or e.sequence > since_sequence)
        ]
        return out if limit is None else out[:limit]

    def last_sequence(self, session_id: str) -> int:
        """The last sequence this process appended for the session, ``-1`` if none."""
        with self._read_lock:
            return self._last.get(session_id, -1)

    def sessions(self) -> list[str]:
        """The sessions this process appended to, first appended first."""
        with self._read_lock:
            return list(self._last)

    def check_writable(self) -> None:
        """Write and remove a probe file in the spool directory.

        Raises:
            OSError: the spool directory cannot be written.
        """
        probe = self._spool.directory / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()

    def close(self) -> None:
        """Seal the spool, deliver it for up to ``drain_timeout`` seconds, stop. Idempotent.

        What is not delivered by then stays in the spool for the next process on it.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._closing = True
            self._deadline = time.monotonic() + self.drain_timeout
            try:
                self._spool.seal()
            finally:
                self._cond.notify_all()
        self._thread.join(self.drain_timeout + 0.5)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(0.5)
        with self._cond:
            if self._sender_done:
                self._spool.close()
                self._http.close()
            else:  # still in a request: the sender closes the spool when it returns
                self._sender_closes = True
        left = self._spool.size
        if left:
            logger.warning(
                "the trace sink to %s closed with %d bytes not delivered; they stay in the "
                "spool %s and are sent by the next process that opens it",
                self.url,
                left,
                self._spool.directory,
            )

    # -- observing ---------------------------------------------------------------------------

    @property
    def spool_directory(self) -> Path:
        """The spool directory."""
        return self._spool.directory

    def stats(self) -> SinkStats:
        """Counters, the spool's fill and the recent batch latencies."""
        with self._lock:
            spool_bytes, segments = self._spool.size, self._spool.segments
            latencies = list(self._latencies)
        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
        return SinkStats(
            url=self.url,
            spool=str(self._spool.directory),
            spool_bytes=spool_bytes,
            max_spool_bytes=self._spool.max_bytes,
            segments=segments,
            batches_sent=self._batches,
            events_sent=self._events,
            duplicates=self._duplicates,
            retries=self._retries,
            rejected_segments=self._rejected,
            wire_bytes=self._wire,
            raw_bytes=self._raw,
            last_success_ts=self._last_success,
            failing_since=self._failing_since,
            last_error=self._last_error,
            latency_p50_ms=None if p50 is None else round(p50 * 1000, 3),
            latency_p99_ms=None if p99 is None else round(p99 * 1000, 3),
            torn_bytes=self._spool.torn_bytes,
        )

    def health(self) -> dict[str, Any]:
        """The sink's state for a health check: ``status``, ``message`` and the counters.

        ``status`` is ``pass``; ``warn`` while the ingest fails or once segments were rejected;
        ``fail`` when the spool is 90 % full or the sender stopped.
        """
        stats = self.stats()
        body: dict[str, Any] = {
            "spool_bytes": stats.spool_bytes,
            "max_spool_bytes": stats.max_spool_bytes,
            "last_success_ts": stats.last_success_ts,
            "failing_since": stats.failing_since,
            "last_error": stats.last_error,
            "rejected_segments": stats.rejected_segments,
            "dropped_total": stats.dropped_total,
        }
        if self._sender_done and not self._closed:
            status, message = "fail", "the sender thread stopped: nothing is delivered"
        elif stats.spool_bytes >= 0.9 * stats.max_spool_bytes:
            status = "fail"
            message = f"the spool is full: {stats.spool_bytes} of {stats.max_spool_bytes} bytes"
        elif stats.failing_since is not None:
            status = "warn"
            message = f"the ingest fails since {_when(stats.failing_since)}: {stats.last_error}"
        elif stats.rejected_segments:
            status = "warn"
            message = (
                f"{stats.rejected_segments} segment(s) rejected by the ingest (see "
                f"{self._spool.directory / 'rejected'})"
            )
        else:
            status = "pass"
            message = f"delivering to {self.url}; {stats.spool_bytes} bytes spooled"
        return {"status": status, "message": message, **body}

    def wait_delivered(self, timeout: float) -> bool:
        """Wait until the spool is empty (everything appended was delivered or rejected).

        Returns False if ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._spool.pending or self._sending:
                left = deadline - time.monotonic()
                if left <= 0 or self._sender_done:
                    return False
                self._cond.notify_all()
                self._cond.wait(min(left, 0.05))
        return True

    # -- internals -----------------------------------------------------------------------------

    def _remember(self, events: Sequence[TraceEvent]) -> None:
        session_id = events[0].session_id
        with self._read_lock:
            run = self._mirror.pop(session_id, None)
            if run is None:
                run = []
            run.extend(events)
            self._mirror[session_id] = run  # the most recently written last
            self._mirrored += len(events)
            self._last[session_id] = events[-1].sequence
            while self._mirrored > self.mirror_events and len(self._mirror) > 1:
                oldest = next(iter(self._mirror))
                self._mirrored -= len(self._mirror.pop(oldest))

    def _full(self, size: int) -> TraceUnavailableError:
        since = self._failing_since
        where = (
            f"the ingest at {self.url} has been unreachable since {_when(since)} (last error: "
            f"{self._last_error})"
            if since is not None
            else f"the ingest at {self.url} does not take events as fast as they come"
        )
        spool = self._spool
        return TraceUnavailableError(
            f"the trace spool {str(spool.directory)!r} is full ({spool.size} of "
            f"{spool.max_bytes} bytes; {size} more offered): {where}. No further events can be "
            "recorded, so the runtime refuses actions that need an audit record. Bring the "
            "ingest back (the spool then drains in order) or give the spool more room "
            "(?max_spool_mb=); nothing spooled is lost",
            details={
                "reason": "spool_full",
                "url": self.url,
                "spool": str(spool.directory),
                "spool_bytes": spool.size,
                "max_spool_bytes": spool.max_bytes,
                "failing_since": since,
                "last_error": self._last_error,
            },
        )

    def _run(self) -> None:
        try:
            while True:
                path = self._next_segment()
                if path is None:
                    return
                self._send_segment(path)
        except BaseException as exc:  # logged, surfaced by health()
            self._last_error = f"the sender stopped: {exc!r}"
            logger.exception("the trace sink's sender to %s stopped", self.url)
        finally:
            with self._cond:
                self._sender_done = True
                self._sending = False
                if self._sender_closes:
                    self._spool.close()
                    self._http.close()
                self._cond.notify_all()

    def _next_segment(self) -> Path | None:
        """The oldest sealed segment, sealing the open one when idle; None to stop."""
        with self._cond:
            self._sending = False
            self._cond.notify_all()
            while True:
                if self._stop.is_set():
                    return None
                if self._closing and time.monotonic() >= self._deadline:
                    return None
                path = self._spool.oldest()
                if path is not None:
                    self._sending = True
                    return path
                if self._spool.pending:
                    if not self._closing and self.linger > 0:
                        deadline = time.monotonic() + self.linger
                        while (left := deadline - time.monotonic()) > 0 and not self._closing:
                            self._cond.wait(left)
                    self._spool.seal()
                    continue
                if self._closing:
                    return None
                self._cond.wait(1.0)

    def _send_segment(self, path: Path) -> None:
        lines = path.read_bytes().splitlines(keepends=True)
        start, limit = 0, self.batch_events
        while start < len(lines):
            end, size = start, 0
            while end < len(lines) and end - start < limit:
                if end > start and size + len(lines[end]) > self.batch_bytes:
                    break
                size += len(lines[end])
                end += 1
            outcome, error = self._deliver(b"".join(lines[start:end]), end - start)
            if outcome == _Outcome.OK:
                start = end
                continue
            if outcome == _Outcome.TOO_LARGE and end - start > 1:
                limit = max(1, (end - start) // 2)
                continue
            if outcome == _Outcome.ABORTED:
                return
            self._reject(path, error, start, end, len(lines))
            return
        with self._cond:
            self._spool.delivered(path)

    def _reject(self, path: Path, error: dict[str, Any], start: int, end: int, total: int) -> None:
        record = {
            "url": self.url,
            "segment": path.name,
            "rejected_at": format_timestamp(time.time_ns()),
            "events_in_segment": total,
            "events_delivered_before": start,
            "failed_batch_lines": [start + 1, end],
            **error,
        }
        with self._cond:
            target = self._spool.reject(path, record)
            self._rejected += 1
        self._last_error = f"rejected: {error.get('message')}"
        logger.error(
            "the ingest at %s refused a trace batch for good (HTTP %s: %s); the segment was "
            "moved to %s and will not be sent again: inspect it, fix the cause, and send it "
            "with `cra ingest send`",
            self.url,
            error.get("status"),
            error.get("message"),
            target,
        )

    def _deliver(self, raw: bytes, count: int) -> tuple[str, dict[str, Any]]:
        body = raw if self._compressor is None else self._compressor.compress(raw)
        attempt = 0
        while True:
            if self._stop.is_set():
                return _Outcome.ABORTED, {}
            started = time.perf_counter()
            try:
                response = self._http.post(INGEST_PATH, content=body)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                wait = backoff_delay(attempt, self.backoff, self.max_backoff)
            else:
                status = response.status_code
                if status == 200:
                    self._succeeded(response, time.perf_counter() - started, count, raw, body)
                    return _Outcome.OK, {}
                message = _message(response)
                error = {"status": status, "message": message, "body": _body(response)}
                if status == 413:
                    self._failed(f"HTTP 413: {message}", retry=False)
                    return _Outcome.TOO_LARGE, error
                if status in _REJECTED:
                    self._failed(f"HTTP {status}: {message}", retry=False)
                    return _Outcome.REJECTED, error
                problem = f"HTTP {status}: {message}"
                if status == 429:
                    given = retry_after_seconds(response.headers.get("retry-after"))
                    wait = max(min(given, 300.0), backoff_delay(attempt, self.backoff, 1.0))
                elif status >= 500:
                    wait = backoff_delay(attempt, self.backoff, self.max_backoff)
                else:  # 401, 403, 404, 415, 501...: configuration; retry slowly
                    wait = self.max_backoff * (0.5 + random.random() / 2)  # noqa: S311
            self._failed(problem, retry=True)
            if self._closing:
                wait = min(wait, self._deadline - time.monotonic())
                if wait <= 0:
                    return _Outcome.ABORTED, {}
            if self._stop.wait(wait):
                return _Outcome.ABORTED, {}
            attempt += 1

    def _succeeded(
        self, response: httpx.Response, elapsed: float, count: int, raw: bytes, body: bytes
    ) -> None:
        duplicates = 0
        with contextlib.suppress(ValueError, TypeError, KeyError):
            duplicates = int(response.json()["duplicates"])
        with self._lock:
            self._latencies.append(elapsed)
        self._batches += 1
        self._events += count
        self._duplicates += duplicates
        self._wire += len(body)
        self._raw += len(raw)
        self._last_success = time.time()
        if self._failing_since is not None:
            logger.warning(
                "the ingest at %s takes trace batches again (failing since %s)",
                self.url,
                _when(self._failing_since),
            )
        self._failing_since = None

    def _failed(self, problem: str, *, retry: bool) -> None:
        self._retries += 1 if retry else 0
        self._last_error = problem
        if self._failing_since is None and retry:
            self._failing_since = time.time()
            logger.warning(
                "the ingest at %s failed (%s); events stay in the spool %s and are retried",
                self.url,
                problem,
                self._spool.directory,
            )


def _when(ts: float | None) -> str:
    return "never" if ts is None else format_timestamp(int(ts * 1e9))


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error.get("message") or error.get("code"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:200] or response.reason_phrase


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


# -- URL ----------------------------------------------------------------------------------------

_FLOATS = {
    "timeout": "read_timeout",
    "connect_timeout": "connect_timeout",
    "backoff": "backoff",
    "max_backoff": "max_backoff",
    "drain": "drain_timeout",
    "linger": "linger",
}
_INTS = {
    "batch_events": "batch_events",
    "mirror_events": "mirror_events",
}
_MEGABYTES = {
    "max_spool_mb": "max_spool_bytes",
    "segment_mb": "segment_bytes",
    "batch_mb": "batch_bytes",
}


def sink_from_url(url: str, *, durable: bool = True, **overrides: Any) -> HttpSink:
    """An :class:`HttpSink` from a store URL: ``http(s)://host:port[/prefix]?options``.

    Options (query parameters): ``spool`` (directory, default ``.cra/spool``),
    ``max_spool_mb`` (256), ``segment_mb`` (4), ``batch_mb`` (4), ``batch_events`` (2000),
    ``compression`` (``zstd`` or ``identity``), ``timeout`` (read timeout, 10 s),
    ``connect_timeout`` (2 s), ``backoff`` (0.1 s), ``max_backoff`` (30 s), ``drain`` (seconds
    :meth:`HttpSink.close` tries to deliver, 2), ``linger`` (0.02 s), ``mirror_events``
    (20000). The API key is read from ``CRA_INGEST_API_KEY``, else ``CRA_API_KEY``; a URL with
    credentials in it is refused.

    Raises:
        ConfigurationError: an unknown or bad option, credentials in the URL, or a spool that
            cannot be used (see :class:`HttpSink`).
    """
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "the ingest URL must not hold credentials: set CRA_INGEST_API_KEY (or CRA_API_KEY)",
            details={"reason": "credentials_in_url"},
        )
    if not parts.hostname:
        raise ConfigurationError(
            f"store URL {url!r} names no host", details={"reason": "store_url_without_path"}
        )
    kwargs: dict[str, Any] = {"durable": durable}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        try:
            if name == "spool":
                kwargs["spool"] = value
            elif name == "compression":
                kwargs["compression"] = value
            elif name in _FLOATS:
                kwargs[_FLOATS[name]] = _positive(float(value), name)
            elif name in _INTS:
                kwargs[_INTS[name]] = int(_positive(int(value), name))
            elif name in _MEGABYTES:
                kwargs[_MEGABYTES[name]] = int(_positive(float(value), name) * _MIB)
            else:
                known = sorted(["spool", "compression", *_FLOATS, *_INTS, *_MEGABYTES])
                raise ConfigurationError(
                    f"unknown option {name!r} in the store URL; known: {', '.join(known)}",
                    details={"reason": "bad_store_option", "option": name},
                )
        except ValueError as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(
                f"store URL option {name}={value!r} is not a positive number",
                details={"reason": "bad_store_option", "option": name},
            ) from exc
    kwargs.update(overrides)
    api_key = os.environ.get("CRA_INGEST_API_KEY") or os.environ.get("CRA_API_KEY") or None
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return HttpSink(base, api_key=api_key, **kwargs)


def _positive(value: float, name: str) -> float:
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(name)
    return value
