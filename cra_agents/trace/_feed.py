"""Who hears that a session's events are in the store: the feed behind the trace stream.

The trace collector publishes, once per written batch, the highest sequence of each session it
made durable: after the writer thread's ``store.sync()``, or when the writer process
acknowledges a batch (it has written and synced it). A listener is told only *that* events up
to a sequence are stored, never the events themselves: it reads them back from the store by
sequence (``store.read(session_id, since_sequence=...)``), so it sees exactly the hashed events
every other reader sees, whichever writer wrote them and whatever the durability.

A listener that subscribes first and then reads what is stored misses nothing: an event stored
before its read is in the read, and one stored after it is announced. Announcements may repeat
or arrive late (the listener reads from its own cursor, so a late or repeated one only costs a
read); they never come for events the store does not hold yet.

Cost when nobody listens: the collector checks one dict for emptiness per batch written (not
per event). Listeners run on the writer's thread (the writer thread, the ack reader of the
writer process, or the caller's thread in ``sync`` mode): they must only hand the news over
(set a flag, wake a loop) and never block or raise.

When recording stops (the trace failed, or the runtime closes) every listener is called once
with ``None`` and dropped: nothing more will be announced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

__all__ = ["CommitFeed", "CommitListener"]

logger = logging.getLogger(__name__)

#: Called with the highest sequence of the session now in the store, or ``None`` once recording
#: has stopped (trace failure or close): no later call will come.
CommitListener = Callable[[int | None], None]


class CommitFeed:
    """Listeners per session id, told when the session's events are stored."""

    __slots__ = ("_lock", "_stopped", "listeners")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: session id -> listeners (a tuple, replaced on change: publishing never copies).
        #: Empty when nobody listens; the collector tests it before calling :meth:`publish`.
        self.listeners: dict[str, tuple[CommitListener, ...]] = {}
        self._stopped = False

    def subscribe(self, session_id: str, listener: CommitListener) -> Callable[[], None]:
        """Call ``listener`` whenever events of ``session_id`` are stored; return unsubscribe.

        On a feed that has stopped already, ``listener(None)`` is called at once.
        Unsubscribing twice is harmless.
        """
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self.listeners[session_id] = (*self.listeners.get(session_id, ()), listener)
        if stopped:
            _call(listener, None)

        def unsubscribe() -> None:
            with self._lock:
                current = self.listeners.get(session_id, ())
                left = tuple(other for other in current if other is not listener)
                if left:
                    self.listeners[session_id] = left
                elif session_id in self.listeners:
                    del self.listeners[session_id]

        return unsubscribe

    def publish(self, durable: Iterable[tuple[str, int]]) -> None:
        """Tell the listeners of each ``(session id, highest stored sequence)``."""
        listeners = self.listeners
        for session_id, sequence in durable:
            for listener in listeners.get(session_id, ()):
                _call(listener, sequence)

    def stop(self) -> None:
        """Recording stopped: call every listener with ``None`` once and drop them all."""
        with self._lock:
            self._stopped = True
            everyone, self.listeners = self.listeners, {}
        for listeners in everyone.values():
            for listener in listeners:
                _call(listener, None)


def _call(listener: CommitListener, sequence: int | None) -> None:
    try:
        listener(sequence)
    except Exception:  # a listener never breaks the writer
        logger.exception("a trace commit listener failed (ignored)")
