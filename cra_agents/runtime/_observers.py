"""The observer protocol: who hears what the runtime did, without the runtime knowing them.

Modelled on OpenTelemetry's ``SpanProcessor.on_start`` / ``on_end``. The runtime calls every
observer at fixed moments of a session's and a call's life; an observer never changes a decision
and never raises into the host (the runtime logs and counts what an observer raises). The
OpenTelemetry spans of :mod:`cra_agents.otel` are one observer; tests and users may add their own
with ``Runtime(observers=[...])``.

Moments, and the thread they run on:

=========================  ==============  ==================================================
hook                       thread          when
=========================  ==============  ==================================================
``on_session_start``       caller          a session was created; returns the observer's state
``on_session_end``         trace writer    ``session.ended`` is durable (``None``: trace failed)
``on_call_start``          caller          a call is about to be decided; returns state
``activate``               caller          make a session's or call's state current (the tool
                                           is about to run, or a ``cra.session`` block begins);
                                           returns a token for ``deactivate``
``deactivate``             caller          undo ``activate``
``on_call_decided``        trace writer    the call's decision events are durable
``on_call_end``            trace writer    the call's last event is durable: its outcome, or
                                           its denial when it never ran
=========================  ==============  ==================================================

``on_call_decided`` and ``on_call_end`` receive the stored events of the call (``None`` when the
trace failed and they will never be stored); ``cra_agents.trace.fold_calls`` turns them into a
call record. The :class:`~cra_agents.runtime.Call` handed to every call hook carries what the
events do not: the tool's name, the action's atlas and risk tier, and (for observers that
capture content) the frozen arguments and the result.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from cra_agents.protocol import TraceEvent
    from cra_agents.runtime._gate import Call
    from cra_agents.runtime._sessions import SessionInfo

__all__ = ["Observer", "ObserverSet", "RuntimeObserver", "load_observer"]

logger = logging.getLogger(__name__)


@runtime_checkable
class RuntimeObserver(Protocol):
    """What the runtime calls at each moment of a session's and a call's life."""

    def on_session_start(self, session: SessionInfo) -> Any:
        """A session started (caller thread). Returns state handed back to later hooks."""

    def on_session_end(
        self,
        session: SessionInfo,
        state: Any,
        event: TraceEvent | None,
        error: BaseException | None,
    ) -> None:
        """``session.ended`` is stored (writer thread); ``error`` ended a ``cra.session``."""

    def on_call_start(self, call: Call) -> Any:
        """A call is about to be decided (caller thread). Returns state for later hooks."""

    def activate(self, state: Any) -> Any:
        """Make ``state`` current on the caller's thread; returns a token for ``deactivate``."""

    def deactivate(self, state: Any, token: Any) -> None:
        """Undo :meth:`activate`."""

    def on_call_decided(self, call: Call, state: Any, events: Sequence[TraceEvent] | None) -> None:
        """The call's decision events are stored (writer thread)."""

    def on_call_end(self, call: Call, state: Any, events: Sequence[TraceEvent] | None) -> None:
        """The call's last event is stored (writer thread): outcome, or denial."""

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Deliver what is buffered."""

    def shutdown(self) -> None:
        """Deliver what is buffered (bounded) and stop."""


class Observer:
    """A :class:`RuntimeObserver` whose every hook does nothing: override what you need."""

    def on_session_start(self, session: SessionInfo) -> Any:
        """See :class:`RuntimeObserver`."""
        return None

    def on_session_end(
        self,
        session: SessionInfo,
        state: Any,
        event: TraceEvent | None,
        error: BaseException | None,
    ) -> None:
        """See :class:`RuntimeObserver`."""

    def on_call_start(self, call: Call) -> Any:
        """See :class:`RuntimeObserver`."""
        return None

    def activate(self, state: Any) -> Any:
        """See :class:`RuntimeObserver`."""
        return None

    def deactivate(self, state: Any, token: Any) -> None:
        """See :class:`RuntimeObserver`."""

    def on_call_decided(self, call: Call, state: Any, events: Sequence[TraceEvent] | None) -> None:
        """See :class:`RuntimeObserver`."""

    def on_call_end(self, call: Call, state: Any, events: Sequence[TraceEvent] | None) -> None:
        """See :class:`RuntimeObserver`."""

    def force_flush(self, timeout: float = 5.0) -> bool:
        """See :class:`RuntimeObserver`."""
        return True

    def shutdown(self) -> None:
        """See :class:`RuntimeObserver`."""


class ObserverSet:
    """The observers of one runtime, called in order; what one raises is logged and counted.

    States are kept per observer: ``start`` hooks return a tuple, one state per observer.
    """

    __slots__ = ("errors", "observers")

    def __new__(cls, observers: Sequence[RuntimeObserver]) -> ObserverSet:
        # One observer (``otel=`` alone) is the usual case: its per-call hooks skip the loop.
        if cls is ObserverSet and len(observers) == 1:
            cls = _OneObserver
        return super().__new__(cls)

    def __init__(self, observers: Sequence[RuntimeObserver]) -> None:
        self.observers: tuple[RuntimeObserver, ...] = tuple(observers)
        #: Exceptions observers raised (logged, never raised into the host).
        self.errors = 0

    def __bool__(self) -> bool:
        return bool(self.observers)

    def _failed(self, observer: RuntimeObserver, hook: str) -> None:
        self.errors += 1
        # Called from exception handlers only.
        name = type(observer).__name__
        logger.warning("observer %s failed in %s (ignored)", name, hook, exc_info=True)  # noqa: LOG014

    def _dispatch(
        self, hook: str, args: Callable[[int], tuple[Any, ...]], *, reverse: bool = False
    ) -> tuple[Any, ...]:
        """Call ``hook`` of each observer with ``args(index)``; what each returned, or None."""
        results: list[Any] = [None] * len(self.observers)
        order = range(len(self.observers))
        for index in reversed(order) if reverse else order:
            observer = self.observers[index]
            try:
                results[index] = getattr(observer, hook)(*args(index))
            except Exception:  # noqa: BLE001 - observers never raise into the host
                self._failed(observer, hook)
        return tuple(results)

    def session_start(self, session: SessionInfo) -> tuple[Any, ...]:
        """``on_session_start`` of each observer; their states."""
        return self._dispatch("on_session_start", lambda _: (session,))

    def session_end(
        self,
        session: SessionInfo,
        states: Sequence[Any],
        event: TraceEvent | None,
        error: BaseException | None,
    ) -> None:
        """``on_session_end`` of each observer."""
        self._dispatch("on_session_end", lambda i: (session, _at(states, i), event, error))

    def call_start(self, call: Call) -> tuple[Any, ...]:
        """``on_call_start`` of each observer; their states."""
        return self._dispatch("on_call_start", lambda _: (call,))

    def activate(self, states: Sequence[Any]) -> tuple[Any, ...]:
        """``activate`` of each observer; their tokens."""
        return self._dispatch("activate", lambda i: (_at(states, i),))

    def deactivate(self, states: Sequence[Any], tokens: Sequence[Any]) -> None:
        """``deactivate`` of each observer, innermost first."""
        self._dispatch("deactivate", lambda i: (_at(states, i), _at(tokens, i)), reverse=True)

    def call_decided(
        self, call: Call, states: Sequence[Any], events: Sequence[TraceEvent] | None
    ) -> None:
        """``on_call_decided`` of each observer."""
        self._dispatch("on_call_decided", lambda i: (call, _at(states, i), events))

    def call_end(
        self, call: Call, states: Sequence[Any], events: Sequence[TraceEvent] | None
    ) -> None:
        """``on_call_end`` of each observer."""
        self._dispatch("on_call_end", lambda i: (call, _at(states, i), events))

    def force_flush(self, timeout: float = 5.0) -> bool:
        """``force_flush`` of each observer; False if any failed or returned False."""
        return all(result is True for result in self._dispatch("force_flush", lambda _: (timeout,)))

    def shutdown(self) -> None:
        """``shutdown`` of each observer."""
        self._dispatch("shutdown", lambda _: ())


class _OneObserver(ObserverSet):
    """An :class:`ObserverSet` of one observer: the hooks of every call, without the loop.

    They run on every guarded call, where the general dispatch (a closure per hook, a list of
    results) costs more than the hook itself; same behaviour otherwise.
    """

    __slots__ = ()

    def call_start(self, call: Call) -> tuple[Any, ...]:
        """``on_call_start`` of the observer; its state."""
        observer = self.observers[0]
        try:
            return (observer.on_call_start(call),)
        except Exception:  # noqa: BLE001 - observers never raise into the host
            self._failed(observer, "on_call_start")
            return (None,)

    def activate(self, states: Sequence[Any]) -> tuple[Any, ...]:
        """``activate`` of the observer; its token."""
        observer = self.observers[0]
        try:
            return (observer.activate(_at(states, 0)),)
        except Exception:  # noqa: BLE001 - observers never raise into the host
            self._failed(observer, "activate")
            return (None,)

    def deactivate(self, states: Sequence[Any], tokens: Sequence[Any]) -> None:
        """``deactivate`` of the observer."""
        observer = self.observers[0]
        try:
            observer.deactivate(_at(states, 0), _at(tokens, 0))
        except Exception:  # noqa: BLE001 - observers never raise into the host
            self._failed(observer, "deactivate")

    def call_decided(
        self, call: Call, states: Sequence[Any], events: Sequence[TraceEvent] | None
    ) -> None:
        """``on_call_decided`` of the observer."""
        observer = self.observers[0]
        try:
            observer.on_call_decided(call, _at(states, 0), events)
        except Exception:  # noqa: BLE001 - observers never raise into the host
            self._failed(observer, "on_call_decided")

    def call_end(
        self, call: Call, states: Sequence[Any], events: Sequence[TraceEvent] | None
    ) -> None:
        """``on_call_end`` of the observer."""
        observer = self.observers[0]
        try:
            observer.on_call_end(call, _at(states, 0), events)
        except Exception:  # noqa: BLE001 - observers never raise into the host
            self._failed(observer, "on_call_end")


def _at(values: Sequence[Any], index: int) -> Any:
    return values[index] if index < len(values) else None


#: Observers the runtime can build from a keyword argument, by module path, so that the runtime
#: never imports them (``otel=`` needs the OpenTelemetry API, which stays unimported until used).
_PLUGINS = {"otel": "cra_agents.otel:observer_from"}


def load_observer(name: str, spec: Any) -> RuntimeObserver | None:
    """Build the observer plugged in as ``name`` (e.g. ``otel``) from its configuration.

    Raises:
        ConfigurationError: the configuration is not understood.
        MissingDependencyError: the extra the observer needs is not installed.
    """
    module_name, _, attribute = _PLUGINS[name].partition(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    observer: RuntimeObserver | None = factory(spec)
    return observer
