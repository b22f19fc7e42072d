"""The trace collector: a background writer that hashes chains and persists them.

Callers append to a :class:`SessionChain` (a sequence number and a queue entry) and mark it
dirty here. A single writer thread drains dirty chains in batches: it computes ids, timestamps,
canonical JSON and SHA-256 (``SessionChain.flush``), hands the events to the store and, for the
durable modes, syncs the store once per batch (group commit).

Durability, chosen per runtime:

``async``
    The caller does not wait for the store. Events reach it within ``flush_interval`` seconds
    (default 0.05 s); a caller that finds ``max_backlog`` events (default 2048) already waiting
    is held back until the writer takes them. A crash loses at most the events queued in that
    window: under ``2 * max_backlog``.
``group``
    The caller returns once the batch holding its events has been written and synced. Callers
    that arrive while a batch is being written share the next sync (group commit).
``sync``
    The caller's own events are hashed, written and synced on its thread before it returns.

Writer, chosen per runtime:

``thread``
    A thread of this process hashes and writes (the only choice for ``memory://`` and for
    store objects).
``process``
    A child process hashes and writes (:mod:`cra_agents.trace._process`); the thread only
    encodes payloads and ships them, so hashing and the store's I/O no longer compete with
    the agent for the GIL. ``group``/``sync`` callers wait for the child's acknowledgement.

If the writer dies or the store fails, the collector records the failure, logs it, and every
later :meth:`check` raises :class:`~cra_agents.TraceUnavailableError`: the runtime then denies
what needs a durable record (fail closed) instead of running tools it cannot record. In
``async`` mode nobody waits for the write that failed, so the loss is also counted
(:meth:`stats`: events never recorded, calls refused) and :meth:`raise_failure` raises it
again where the caller asks what became of its events (``Runtime.flush``, ``close``, the end
of a session).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Literal

from cra_agents._exceptions import ConfigurationError, TraceUnavailableError
from cra_agents.trace._chain import SessionChain, build_event
from cra_agents.trace._feed import CommitFeed
from cra_agents.trace._process import Ack, Record, WriterProcess
from cra_agents.trace._store import TraceStore

__all__ = ["DURABILITY_MODES", "Durability", "TraceCollector", "TraceStats"]

logger = logging.getLogger(__name__)

Durability = Literal["async", "group", "sync"]
# Events hashed and stored at a time. Small enough that the writer thread, which yields the
# GIL between chunks, never holds up a caller for more than about a millisecond.
_CHUNK = 256
DURABILITY_MODES: tuple[Durability, ...] = ("async", "group", "sync")


@dataclass(frozen=True, slots=True)
class TraceStats:
    """What became of the events handed to the trace writer so far.

    .. versionadded:: 0.2
    """

    #: Events handed to the writer.
    appended: int
    #: Events known to be in the store.
    written: int
    #: Events handed over but not (yet) known to be in the store; once the trace has failed,
    #: the events that will never be recorded.
    unrecorded: int
    #: Calls and requests refused because the trace had failed (``TRACE_UNAVAILABLE``).
    refused: int
    #: Why recording stopped (``repr`` of the error), or None while it works.
    failure: str | None


class TraceCollector:
    """Owns the writer thread and the store of one runtime.

    Args:
        store: Where finalised events go.
        durability: ``async``, ``group`` or ``sync`` (see the module docstring).
        flush_interval: Longest time an event waits in ``async`` mode, in seconds.
        max_backlog: Queued events that wake the writer; callers that find this many events
            waiting are held back until the writer takes them (backpressure).
        backpressure_timeout: Longest a caller is held back before its call is refused.
        commit_delay: In ``group`` mode, how long the writer waits after waking for more
            callers to join the batch, in seconds (0 disables).
        process_url: Hash and write in a writer process that opens this store URL (the
            ``process`` writer); ``store`` is then only read from in this process.

    Raises:
        ConfigurationError: an unknown ``durability`` (also a ``ValueError``).
    """

    def __init__(
        self,
        store: TraceStore,
        *,
        durability: Durability = "async",
        flush_interval: float = 0.05,
        max_backlog: int = 2048,
        backpressure_timeout: float = 10.0,
        commit_delay: float = 0.0002,
        process_url: str | None = None,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ConfigurationError(
                f"durability must be one of {', '.join(DURABILITY_MODES)}, not {durability!r}",
                details={"reason": "unknown_durability"},
            )
        self.store = store
        self.durability: Durability = durability
        self.flush_interval = flush_interval
        self.max_backlog = max_backlog
        self.backpressure_timeout = backpressure_timeout
        self.commit_delay = commit_delay
        # A plain lock: cheaper than RLock. committed() takes it directly: a Condition's
        # __enter__ is a Python-level call, and committed() runs twice per guarded call.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._dirty: dict[int, SessionChain] = {}
        self._backlog = 0
        self._write_lock = threading.Lock()  # one writer of the store at a time
        self._failure: BaseException | None = None
        self._closed = False
        # Callers held back by backpressure right now: the writer must not nap while any is.
        self._held = 0
        self._written = 0
        self._appended = 0  # events handed over by committed()
        self._refused = 0  # check() refusals after a failure
        self._thread: threading.Thread | None = None
        #: Who hears that a session's events are stored (the trace stream); see ``_feed``.
        self.feed = CommitFeed()
        # The process writer: what was shipped and not yet acknowledged, by session id
        # (chain, last sequence shipped); messages shipped and acknowledged.
        self._process: WriterProcess | None = None
        self._unacked: dict[str, tuple[SessionChain, int]] = {}
        self._shipped = 0
        self._acked = 0
        if process_url is not None:
            self._process = WriterProcess(
                process_url,
                durable=durability != "async",
                on_ack=self._on_ack,
                on_exit=self._on_exit,
            )
        if durability != "sync" or self._process is not None:
            self._thread = threading.Thread(target=self._run, name="cra-trace-writer", daemon=True)
            self._thread.start()
        _live.add(self)

    # -- caller side ---------------------------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped recording, if any."""
        return self._failure

    @property
    def writer_pid(self) -> int | None:
        """The writer process's id, None when a thread writes."""
        return None if self._process is None else self._process.pid

    @property
    def written(self) -> int:
        """Events handed to the store so far."""
        return self._written

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def stats(self) -> TraceStats:
        """Counts of what was recorded and what was lost (see :class:`TraceStats`)."""
        with self._cond:
            appended, written = self._appended, self._written
        failure = self._failure
        return TraceStats(
            appended=appended,
            written=written,
            unrecorded=max(appended - written, 0),
            refused=self._refused,
            failure=None if failure is None else repr(failure),
        )

    def check(self) -> None:
        """Raise :class:`TraceUnavailableError` if events can no longer be recorded."""
        if self._failure is not None:
            self._refused += 1  # only ever on this failure path: free for working calls
            raise self._unavailable()
        if self._closed:
            raise TraceUnavailableError(
                "the runtime is closed; no further events can be recorded",
                details={"reason": "trace_unavailable", "cause": "closed"},
            )

    def _unavailable(self) -> TraceUnavailableError:
        failure = self._failure
        stats = self.stats()
        return TraceUnavailableError(
            f"the trace cannot be recorded ({failure!r}); {stats.unrecorded} event(s) were "
            "not recorded, and the runtime refuses to act without an audit record",
            details={
                "reason": "trace_unavailable",
                "cause": repr(failure),
                "unrecorded": stats.unrecorded,
            },
        )

    def raise_failure(self) -> None:
        """Raise :class:`TraceUnavailableError` if recording ever failed (closed or not).

        Unlike :meth:`check`, a runtime closed in good order passes: this reports loss.
        """
        if self._failure is not None:
            raise self._unavailable()

    def committed(self, chain: SessionChain, sequence: int) -> None:
        """Called after appending up to ``sequence``; returns when durability allows.

        Raises:
            TraceUnavailableError: the events could not be made durable.
        """
        if self.durability == "sync":
            with self._write_lock:
                if sequence > chain.committed:
                    with self._cond:
                        self._appended += sequence - chain.committed
                    chain.committed = sequence
                self._write([chain])
            if self._process is not None:  # shipped: wait for the child's acknowledgement
                with self._cond:
                    self._await_durable(chain, sequence)
            self.check()
            return
        with self._mutex:  # the lock of self._cond
            self._dirty[id(chain)] = chain
            added = sequence - chain.committed
            if added > 0:
                self._backlog += added
                self._appended += added
                chain.committed = sequence
            if self.durability == "async":
                if self._backlog >= self.max_backlog:
                    self._hold_back()
                return
            self._cond.notify_all()
            self._await_durable(chain, sequence)
        self.check()

    def _await_durable(self, chain: SessionChain, sequence: int) -> None:
        """Wait (holding ``_cond``) until ``sequence`` is durable; fail on the deadline."""
        deadline = time.monotonic() + self.backpressure_timeout
        while chain.durable < sequence and self._failure is None and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                # A writer that makes no progress is as bad as a dead one: fail closed.
                self._cond.release()
                try:
                    self._fail(
                        TimeoutError(f"no durable write within {self.backpressure_timeout:g}s")
                    )
                finally:
                    self._cond.acquire()
                break
            self._cond.wait(timeout=min(left, 1.0))

    def _hold_back(self) -> None:
        """Backpressure (caller holds ``_cond``): wait for the writer to take the backlog.

        At most ``2 * max_backlog`` events are ever waiting to be written, which bounds memory
        and what a crash in ``async`` mode can lose. If the writer does not catch up within
        ``backpressure_timeout`` the call is refused rather than queued without bound.
        """
        self._cond.notify_all()
        deadline = time.monotonic() + self.backpressure_timeout
        self._held += 1
        try:
            while self._backlog >= self.max_backlog and self._failure is None and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TraceUnavailableError(
                        f"the trace writer is {self._backlog} events behind after "
                        f"{self.backpressure_timeout:g}s; refusing to queue more",
                        details={"reason": "trace_backpressure", "backlog": self._backlog},
                    )
                self._cond.wait(timeout=left)
        finally:
            self._held -= 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything queued so far, on the calling thread.

        With the writer process, ship it and wait for the child's acknowledgement. Returns
        False if the store (or the child) stayed busy for ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=timeout):
            return False
        try:
            self._write(self._take())
        finally:
            self._write_lock.release()
        if self._process is None:
            return True
        with self._cond:
            target = self._shipped
            while self._acked < target and self._failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Drain, stop the writer (thread and process) and close the store. Idempotent.

        Called on the writer thread itself (a runtime's finalizer run by garbage collection
        there, or a commit listener), the close runs on a thread of its own: the writer cannot
        join itself, nor wait for the write it is in the middle of.
        """
        if self._closed:
            return
        if self._thread is not None and threading.current_thread() is self._thread:
            threading.Thread(
                target=self.close, args=(timeout,), name="cra-trace-close", daemon=True
            ).start()
            return
        try:
            self.flush(timeout)
        except Exception:
            logger.exception("draining the trace before close failed")
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join(timeout)
            with self._write_lock:
                try:
                    self._write(self._take())
                except Exception:
                    logger.exception("writing the last events before close failed")
                finally:
                    if self._process is not None:
                        self._process.close(timeout)
                    self.feed.stop()  # everything is stored; the store closes next
                    try:
                        self.store.close()
                    except Exception as exc:  # noqa: BLE001 - the last sync failed: loss
                        self._fail(exc)
            _live.discard(self)

    # -- writer side ---------------------------------------------------------------------

    def _take(self) -> list[SessionChain]:
        with self._cond:
            chains = list(self._dirty.values())
            self._dirty.clear()
            self._backlog = 0
            self._cond.notify_all()  # callers held back by backpressure may go on
        return chains

    def _write(self, chains: list[SessionChain]) -> None:
        """Hash and persist ``chains`` (caller holds ``_write_lock``)."""
        if self._failure is not None:
            for chain in chains:
                chain.abandon()
            return
        if self._process is not None:
            self._ship(self._process, chains)
            return
        flushed = []
        try:
            for chain in chains:
                while chain.pending:
                    events = chain.flush(_CHUNK)
                    if events:
                        self.store.append(events)
                        flushed.append((chain, events))
                    if threading.current_thread() is self._thread:
                        time.sleep(0)  # let callers run: recording is background work
            if flushed:
                # Commits the batch; stores opened durable (group, sync) also fsync here.
                self.store.sync()
        except Exception as exc:  # noqa: BLE001 - any store failure must stop recording
            self._fail(exc)
            for chain in chains:
                chain.abandon()
            return
        for chain, events in flushed:
            chain.durable = events[-1].sequence
            self._written += len(events)
        if flushed and self.durability == "group":
            with self._cond:
                self._cond.notify_all()
        if self.feed.listeners:  # a dict: nothing to pay for when nobody listens
            self.feed.publish((chain.session_id, chain.durable) for chain, _ in flushed)
        # Watchers (observers) hear of events only once they are durable.
        for chain, events in flushed:
            chain.notify(events)

    def _ship(self, process: WriterProcess, chains: list[SessionChain]) -> None:
        """Encode ``chains``' queued events and send them to the writer process."""
        records: list[Record] = []
        size = 0
        try:
            for chain in chains:
                while queued := chain.take(_CHUNK):
                    last = queued[-1][0] + len(queued[-1][2]) - 1
                    with self._cond:  # before sending: the acknowledgement may come at once
                        self._unacked[chain.session_id] = (chain, last)
                    records.append((chain.session_id, chain.trace_id, chain.watched, queued))
                    size += sum(len(batch) for _, _, batch in queued)
                    if size >= 4 * _CHUNK:
                        self._send(process, records)
                        records, size = [], 0
            if records:
                self._send(process, records)
        except Exception as exc:  # noqa: BLE001 - a writer that cannot be fed fails closed
            self._fail(exc)
            for chain in chains:
                chain.abandon()

    def _send(self, process: WriterProcess, records: list[Record]) -> None:
        with self._cond:
            self._shipped += 1
        process.send(records)

    def _on_ack(self, ack: Ack) -> None:
        """The writer process made events durable (runs on its reader thread)."""
        messages, durable, watched = ack
        chains: dict[str, SessionChain] = {}
        with self._cond:
            for session_id, sequence in durable:
                entry = self._unacked.get(session_id)
                if entry is None:
                    continue
                chain, last = entry
                chains[session_id] = chain
                if sequence > chain.durable:
                    self._written += sequence - chain.durable
                    chain.durable = sequence
                if sequence >= last:
                    del self._unacked[session_id]
            self._acked += messages
            self._cond.notify_all()
        if self.feed.listeners:  # a dict: nothing to pay for when nobody listens
            self.feed.publish(durable)
        # Watchers (observers) hear of events only once they are durable.
        for session_id, fields in watched.items():
            watched_chain = chains.get(session_id)
            if watched_chain is not None:
                watched_chain.notify([build_event(f) for f in fields])

    def _on_exit(self, exc: BaseException) -> None:
        """The writer process died or failed: fail closed, tell watchers nothing will come."""
        self._fail(exc)
        with self._cond:
            chains = [chain for chain, _ in self._unacked.values()]
            self._unacked.clear()
        for chain in chains:
            chain.abandon()

    def should_nap(self) -> bool:
        """Whether the async writer may pause to let a batch build up.

        Never while a caller waits for it (backpressure) or half a backlog is queued.
        """
        return not self._closed and not self._held and self._backlog < self.max_backlog // 2

    def _nap(self) -> None:
        """Let callers accumulate a batch instead of waking per event (at most 5 ms).

        A plain sleep, not a condition wait: waking on every held-back caller made batches
        smaller and cost 8 % of sustained throughput; a caller that arrives during a nap waits
        for its end, at most 5 ms.
        """
        if self.should_nap():
            time.sleep(min(self.flush_interval, 0.005))

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = exc
                logger.error(
                    "TRACE recording failed, the runtime now refuses actions that need an "
                    "audit record (trace_unavailable): %r",
                    exc,
                )
            self._cond.notify_all()
        self.feed.stop()  # nothing more will be stored

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._dirty and not self._closed:
                        self._cond.wait(timeout=self.flush_interval)
                    if self._closed and not self._dirty:
                        return
                if self.durability == "group" and self.commit_delay:
                    # Give callers that are about to commit a moment to join this batch:
                    # one sync then serves them all (PostgreSQL's commit_delay).
                    time.sleep(self.commit_delay)
                # Take under the write lock: a flush() that comes in between must wait for
                # these events, not return as if nothing were queued.
                with self._write_lock:
                    self._write(self._take())
                if self.durability == "async":
                    self._nap()
        except BaseException as exc:  # noqa: BLE001 - recorded and logged; check() fails closed
            self._fail(exc)


_live: weakref.WeakSet[TraceCollector] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for collector in list(_live):
        try:
            collector.close(timeout=5.0)
        except Exception:
            logger.exception("closing a trace collector at exit failed")
