"""The trace store interface, and the one place a store URL becomes a store."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Literal, Protocol, runtime_checkable

from cra_agents._exceptions import ConfigurationError
from cra_agents.trace._jsonl import JsonlStore
from cra_agents.trace._memory import MemoryStore
from cra_agents.trace._sqlite import SqliteStore

if TYPE_CHECKING:
    from cra_agents.protocol import TraceEvent

__all__ = [
    "WRITERS",
    "TraceStore",
    "Writer",
    "open_store",
    "read_session_ends",
    "redact_store_url",
    "writer_url",
]

#: Who hashes and writes events: see :mod:`cra_agents.trace._collector`.
Writer = Literal["auto", "thread", "process"]
WRITERS: tuple[Writer, ...] = ("auto", "thread", "process")

_DEFAULT_URL = "sqlite://.cra/traces.db"
_SCHEMES = "memory://, jsonl://DIR, sqlite://FILE, postgresql://HOST/DATABASE or http(s)://INGEST"


@runtime_checkable
class TraceStore(Protocol):
    """Where finalised TRACE events go.

    The runtime's writer calls ``append`` then ``sync`` once per batch, and ``close`` at
    shutdown; readers (the runtime, the CLI, replay, reports, OTel span checks) call ``read``,
    ``sessions`` and ``last_sequence``, possibly from other threads while the writer runs.
    Implementations must be thread-safe. :class:`~cra_agents.trace.MemoryStore`,
    :class:`~cra_agents.trace.JsonlStore`, :class:`~cra_agents.trace.SqliteStore` and
    :class:`~cra_agents.trace.PostgresStore` are the stores that ship; :func:`open_store` picks
    one from a URL. A store may also offer ``iter_events(session_id, batch=N)``, the events
    of a session fetched N at a time: :func:`~cra_agents.trace.verify_store` then streams
    each session instead of reading it whole.
    """

    def append(self, events: Sequence[TraceEvent]) -> None:
        """Persist ``events``: one session's, hashed and in sequence order.

        They need not be durable before :meth:`sync` returns.

        Raises:
            ValueError: the store is closed.
        """

    def sync(self) -> None:
        """Make everything appended so far durable (fsync or commit), as the store allows."""

    def read(
        self,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Events of a session in sequence order (``[]`` for an unknown session).

        Args:
            session_id: The session.
            event_type: Only events of this type.
            since_sequence: Only events after this sequence (exclusive).
            limit: At most this many events, the first ones.
        """
        ...

    def last_sequence(self, session_id: str) -> int:
        """The sequence of the session's last stored event, ``-1`` when it has none.

        Cheaper than :meth:`read`: a follower (``cra trace tail -f``) starts from here.
        """
        ...

    def sessions(self) -> list[str]:
        """Ids of the sessions with events, oldest first."""
        ...

    def close(self) -> None:
        """Sync and release resources; later appends fail. Idempotent."""


def open_store(
    store: TraceStore | str | os.PathLike[str] | None,
    *,
    durable: bool = True,
    writable: bool = False,
) -> TraceStore:
    """A store object from a store or a URL.

    ``memory://``; ``jsonl:///absolute/dir`` or ``jsonl://relative/dir``;
    ``sqlite:///absolute/file.db`` or ``sqlite://relative/file.db``;
    ``postgresql://user:password@host:port/database`` (or ``postgres://``; libpq's URL, plus
    ``?schema=NAME``; needs the ``postgres`` extra); ``http://host:port?spool=DIR`` or
    ``https://...``: an ingest server, through a local spool
    (:func:`~cra_agents.trace.sink_from_url` lists the options). ``None`` means the
    embedded default, SQLite at ``./.cra/traces.db``, unless ``CRA_AGENTS_STORE`` names
    another URL. A store object is returned as it is.

    Args:
        store: A store, a store URL, or ``None``.
        durable: For the file stores: sync to the disk (see each store), not only to the OS.
        writable: Check now that the store can be written (a probe file in a JSONL directory,
            a rolled-back write to a SQLite database; stores of your own with a
            ``check_writable()`` method are asked too), so a read-only, full or missing store
            is refused when the runtime is configured rather than at its first event.

    Raises:
        ConfigurationError: not a URL, a URL without a path, or an unknown scheme (also a
            ``ValueError``); with ``writable``, a store that cannot be written (reason
            ``store_not_writable``); a PostgreSQL server that cannot be reached
            (``store_not_openable``).
        MissingDependencyError: a ``postgresql://`` URL without psycopg (the ``postgres``
            extra).
    """
    opened = _open(store, durable, "store_not_writable" if writable else "store_not_openable")
    if writable:
        check = getattr(opened, "check_writable", None)
        if check is not None:
            try:
                check()
            except Exception as exc:
                if opened is not store:
                    with contextlib.suppress(Exception):
                        opened.close()
                raise ConfigurationError(
                    f"the trace store {_describe(store, opened)} cannot be written ({exc}); "
                    "every event must be recorded, so the runtime refuses to start: point it "
                    "at a writable location",
                    details={"reason": "store_not_writable", "cause": repr(exc)},
                ) from exc
    return opened


def _describe(store: object, opened: TraceStore) -> str:
    if isinstance(store, str | os.PathLike):
        return repr(redact_store_url(os.fspath(store)))
    return type(opened).__name__


def _open(
    store: TraceStore | str | os.PathLike[str] | None, durable: bool, reason: str
) -> TraceStore:
    if store is None:
        store = os.environ.get("CRA_AGENTS_STORE") or _DEFAULT_URL
    if not isinstance(store, str | os.PathLike):
        return store
    url = os.fspath(store)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise _bad_url(f"store {url!r} is not a URL; use {_SCHEMES}", "store_not_a_url")
    if scheme == "memory":
        return MemoryStore()
    if not rest:
        raise _bad_url(f"store URL {url!r} names no path", "store_url_without_path")
    try:
        if scheme == "jsonl":
            return JsonlStore(rest, durable=durable)
        if scheme == "sqlite":
            return SqliteStore(rest, durable=durable)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigurationError(
            f"cannot open the trace store {url!r} ({exc}); point it at a writable location",
            details={"reason": reason, "cause": repr(exc)},
        ) from exc
    if scheme in ("http", "https"):
        # The HTTP sink (httpx, and zstandard when compressing) loads only when asked for.
        from cra_agents.trace._http import sink_from_url

        return sink_from_url(url, durable=durable)
    if scheme in ("postgresql", "postgres"):
        from cra_agents.trace._postgres import PostgresStore  # psycopg: the postgres extra

        return PostgresStore(url, durable=durable)
    raise _bad_url(f"unknown store scheme {scheme!r}; use {_SCHEMES}", "unknown_store_scheme")


def redact_store_url(url: str) -> str:
    """``url`` with its password (user info or ``password=`` parameter) shown as ``***``.

    For messages and logs: a ``postgresql://`` URL may carry the database password. The rest
    of the URL is kept as written.
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        cut = len(rest)
        for mark in "/?#":
            found = rest.find(mark)
            if found != -1:
                cut = min(cut, found)
        authority, tail = rest[:cut], rest[cut:]
        userinfo, at, host = authority.rpartition("@")
        if at and ":" in userinfo:
            authority = f"{userinfo.partition(':')[0]}:***@{host}"
        url = f"{scheme}://{authority}{tail}"
    return _QUERY_PASSWORD.sub(r"\1***", url)


_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*")


def _bad_url(message: str, reason: str) -> ConfigurationError:
    return ConfigurationError(message, details={"reason": reason})


def writer_url(store: TraceStore, writer: Writer = "auto") -> str | None:
    """The store URL a writer process opens for ``store``, or None to write in a thread.

    ``auto`` means the ``CRA_AGENTS_WRITER`` environment variable if set, else ``process``
    for the file stores (JSONL and SQLite) and ``thread`` for the others (``memory://``,
    store objects of your own), which another process cannot open. A ``postgresql://``
    store is written in a thread too: a writer process would have the URL, password
    included, on its command line, and the server does the storing work anyway.

    Raises:
        ConfigurationError: an unknown ``writer``, or ``process`` asked for a store another
            process cannot open (also a ``ValueError``).
    """
    if writer not in WRITERS:
        raise ConfigurationError(
            f"writer must be one of {', '.join(WRITERS)}, not {writer!r}",
            details={"reason": "unknown_writer"},
        )
    explicit = writer != "auto"
    if not explicit:
        chosen = os.environ.get("CRA_AGENTS_WRITER") or "process"
        if chosen not in ("thread", "process"):
            raise ConfigurationError(
                f"CRA_AGENTS_WRITER must be thread or process, not {chosen!r}",
                details={"reason": "unknown_writer"},
            )
        writer = chosen  # type: ignore[assignment]
    if writer == "thread":
        return None
    if type(store) is JsonlStore:
        return f"jsonl://{store.directory.resolve()}"
    if type(store) is SqliteStore:
        return f"sqlite://{store.path.resolve()}"
    if explicit:
        raise ConfigurationError(
            f"the process writer needs a jsonl:// or sqlite:// store, not {type(store).__name__}"
            " (a postgresql:// store is written in a thread: use writer='thread' or 'auto')",
            details={"reason": "writer_needs_file_store"},
        )
    return None


def read_session_ends(store: TraceStore, session_id: str) -> tuple[TraceEvent, ...]:
    """A session's first and last stored events (one if it has one, none if unknown).

    Three indexed reads whatever the session's length (its first event, the sequence of its
    last, that event), never the events between: what the runtime and the server need to
    describe a session they only have in the store. The runtime writes ``session.ended``
    after every other event of its session, so the last event says whether it ended.

    Raises:
        ValueError: the store cannot read the session (a :class:`~cra_agents.TraceError` when
            its index disagrees with its events).
    """
    first = store.read(session_id, limit=1)
    if not first:
        return ()
    last_sequence = store.last_sequence(session_id)
    if last_sequence <= first[0].sequence:
        return (first[0],)
    last = store.read(session_id, since_sequence=last_sequence - 1, limit=1)
    return (first[0], *last)
