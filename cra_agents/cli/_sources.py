"""Where a command's trace comes from: a ``.trace.jsonl`` file, or a session in a store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cra_agents._exceptions import TraceError
from cra_agents.cli._output import CLIError
from cra_agents.trace import TraceStore, open_store, redact_store_url

if TYPE_CHECKING:
    from cra_agents.protocol import TraceEvent

__all__ = [
    "Source",
    "StoreRef",
    "iter_targets",
    "load_checkpoint_set",
    "load_checkpoints",
    "read_file",
    "resolve_target",
]

_DEFAULT = "sqlite://.cra/traces.db"


@dataclass
class StoreRef:
    """A store URL, opened on first use and never created by a read-only command."""

    url: str | None
    _store: TraceStore | None = field(default=None, init=False, repr=False)

    @property
    def location(self) -> str:
        """The URL the command reads."""
        return self.url or os.environ.get("CRA_AGENTS_STORE") or _DEFAULT

    @property
    def label(self) -> str:
        """The URL the command reads, as shown: without its password."""
        return redact_store_url(self.location)

    def open(self) -> TraceStore:
        """The store; it must already exist.

        Raises:
            CLIError: no store there, or an unknown URL.
        """
        if self._store is not None:
            return self._store
        url = self.location
        scheme, sep, rest = url.partition("://")
        if sep and scheme in ("sqlite", "jsonl") and rest and not Path(rest).exists():
            raise CLIError(
                "store_not_found",
                f"there is no trace store at {url}",
                "pass --store URL (sqlite://FILE, jsonl://DIR or postgresql://HOST/DATABASE), set "
                "CRA_AGENTS_STORE, or run "
                "this from the directory whose .cra/ holds the traces",
            )
        if scheme == "memory":
            raise CLIError(
                "store_not_readable",
                "memory:// stores live inside one process and cannot be read from here",
                "configure the runtime with sqlite://, jsonl:// or postgresql:// to inspect its "
                "traces",
            )
        try:
            self._store = open_store(url, durable=False)
        except (ValueError, OSError) as exc:
            raise CLIError(
                "store_unusable",
                f"cannot open the trace store {self.label}: {exc}",
                "use sqlite://FILE, jsonl://DIR or postgresql://HOST/DATABASE",
            ) from exc
        return self._store

    def sessions(self) -> list[str]:
        """Session ids, oldest first."""
        return self.open().sessions()

    def read(self, session_id: str, since_sequence: int | None = None) -> list[TraceEvent]:
        """One session's events (after ``since_sequence``).

        Raises:
            CLIError: ``unreadable_session``: the session's stored events are not TRACE
                events (an id that is not a UUID, written by an older version, or damage).
                Commands over the whole store report that session and go on.
        """
        try:
            return self.open().read(session_id, since_sequence=since_sequence)
        except TraceError:
            raise  # the store's index disagrees with its events: tampering, not damage
        except ValueError as exc:
            first = str(exc).strip().splitlines()[:3]
            raise CLIError(
                "unreadable_session",
                f"the stored events of session {session_id!r} cannot be read: "
                f"{' '.join(line.strip() for line in first)}",
                "'cra trace verify --all' reports every such session; the others are intact",
            ) from exc

    def close(self) -> None:
        """Close the store if it was opened."""
        if self._store is not None:
            self._store.close()
            self._store = None


@dataclass
class Source:
    """One session's trace: a session in a store, or one session's events in a file.

    A file may hold several sessions one after the other (``cra trace export --all``); each
    is then a source of its own, labelled ``FILE#SESSION``. ``items`` are the file's lines as
    the verifier reads them: dicts, and an exception for an unreadable last line.
    """

    label: str
    session_id: str | None
    path: Path | None = None
    store: StoreRef | None = None
    items: list[Any] | None = None

    def events(self) -> list[dict[str, Any]]:
        """The events as dicts, in stored order.

        Raises:
            CLIError: a line of the file is not a TRACE event (``cra trace verify`` says more).
        """
        if self.items is not None:
            from cra_agents.protocol import TraceEvent

            for number, item in enumerate(self.items, 1):
                problem: object = item if isinstance(item, BaseException) else None
                if problem is None:
                    try:
                        TraceEvent.model_validate(item, strict=True)
                    except ValidationError as exc:
                        problem = f"not a TRACE event ({exc.errors()[0]['msg']})"
                if problem is not None:
                    raise CLIError(
                        "bad_trace_file",
                        f"{self.label}: event {number} cannot be read: {problem}",
                        f"run 'cra trace verify {self.path}' to locate the damage",
                    )
            return [dict(item) for item in self.items]
        if self.store is None or self.session_id is None:  # pragma: no cover - invariant
            raise CLIError("internal", "a source without a file or a session", "report it")
        return [e.model_dump(mode="json") for e in self.store.read(self.session_id)]

    @property
    def log_id(self) -> str | None:
        """The session id the events carry (what checkpoints are signed for)."""
        if self.session_id is not None:
            return self.session_id
        first = next((i for i in self.items or [] if isinstance(i, dict)), None)
        return str(first["session_id"]) if first and "session_id" in first else None


def read_file(path: Path) -> list[Source]:
    """The sessions of a trace file, one source each (one for an empty or damaged file).

    Raises:
        CLIError: the file cannot be read.
    """
    from cra_agents.trace import iter_jsonl

    try:
        items: list[Any] = list(iter_jsonl(path))
    except OSError as exc:
        raise CLIError(
            "trace_not_readable", f"cannot read {path}: {exc}", "check the path and permissions"
        ) from exc
    groups: list[tuple[str | None, list[Any]]] = []
    seen: set[str | None] = set()
    for item in items:
        sid = item.get("session_id") if isinstance(item, dict) else None
        sid = sid if isinstance(sid, str) else None
        if isinstance(item, dict) and (not groups or groups[-1][0] != sid):
            if sid in seen:  # sessions interleave: not an export, verify it as one chain
                return [Source(str(path), None, path=path, items=items)]
            seen.add(sid)
            groups.append((sid, []))
        if not groups:
            groups.append((None, []))
        groups[-1][1].append(item)
    if len(groups) <= 1:
        return [Source(str(path), None, path=path, items=items)]
    return [Source(f"{path}#{sid}", sid, path=path, items=group) for sid, group in groups]


def resolve_target(target: str, store: StoreRef) -> Source:
    """One session: a file (``FILE#SESSION`` for one of several), an id, a prefix, ``last``.

    Raises:
        CLIError: nothing matches, a prefix matches several sessions, or a file holds several.
    """
    name, _, wanted = target.partition("#")
    path = Path(name)
    if path.is_file():
        sources = read_file(path)
        if wanted:
            picked = [s for s in sources if (s.log_id or "").startswith(wanted)]
            if len(picked) == 1:
                return picked[0]
            raise CLIError(
                "session_not_found" if not picked else "ambiguous_session",
                f"{path} holds {'no' if not picked else len(picked)} sessions matching {wanted!r}",
                f"pick one of: {', '.join(str(s.log_id) for s in sources[:5])}",
            )
        if len(sources) > 1:
            raise CLIError(
                "several_sessions",
                f"{path} holds {len(sources)} sessions",
                f"name one as FILE#SESSION, e.g. {path}#{sources[0].log_id}",
            )
        return sources[0]
    if target.endswith(".jsonl") or os.sep in target:
        raise CLIError(
            "trace_not_found",
            f"there is no trace file {target}",
            "check the path, or pass a session id (see 'cra trace list')",
        )
    sessions = store.sessions()
    if target in ("last", "latest"):
        if not sessions:
            raise CLIError(
                "session_not_found",
                f"the store {store.label} holds no sessions",
                "run an agent with this store first, or pass --store",
            )
        return Source(sessions[-1], sessions[-1], store=store)
    if target in sessions:
        return Source(target, target, store=store)
    matches = [s for s in sessions if s.startswith(target)]
    if len(matches) == 1:
        return Source(matches[0], matches[0], store=store)
    if matches:
        raise CLIError(
            "ambiguous_session",
            f"{target!r} is the start of {len(matches)} session ids",
            "give more characters of the session id",
        )
    raise CLIError(
        "session_not_found",
        f"no session {target!r} in {store.label}",
        "list sessions with 'cra trace list', or pass --store / a .trace.jsonl path",
    )


def iter_targets(targets: list[str], all_sessions: bool, store: StoreRef) -> Iterator[Source]:
    """The sources named on the command line (every session of a file), or ``--all``.

    Raises:
        CLIError: neither targets nor ``--all``.
    """
    if all_sessions:
        for session_id in store.sessions():
            yield Source(session_id, session_id, store=store)
    elif not targets:
        raise CLIError(
            "usage", "name a trace file or session, or pass --all", "see 'cra trace list'"
        )
    for target in targets:
        if "#" not in target and Path(target).is_file():
            yield from read_file(Path(target))
        else:
            yield resolve_target(target, store)


def load_checkpoints(
    checkpoint: str | None, pubkey: str | None, log_id: str | None
) -> tuple[list[Any], Any]:
    """One log's checkpoints (from a ``.checkpoints.jsonl`` file or a directory), and the key.

    Raises:
        CLIError: only one of the two options, unreadable files, or no checkpoint of the log.
    """
    if checkpoint is not None and Path(checkpoint).is_dir() and log_id is None:
        raise CLIError(
            "usage",
            "a checkpoint directory needs a session to pick its file",
            "pass the checkpoint file itself",
        )
    return _load(checkpoint, pubkey, log_id)


def load_checkpoint_set(checkpoint: str | None, pubkey: str | None) -> tuple[list[Any], Any]:
    """Every checkpoint in a ``.checkpoints.jsonl`` file or a directory of them, and the key.

    The set vouches for each log it names: ``cra trace verify`` requires all of them.

    Raises:
        CLIError: only one of the two options, unreadable files, or no checkpoint at all.
    """
    return _load(checkpoint, pubkey, None)


def _load(checkpoint: str | None, pubkey: str | None, log_id: str | None) -> tuple[list[Any], Any]:
    from cra_agents.trace import load_verify_key, read_checkpoints

    if checkpoint is None and pubkey is None:
        return [], None
    if checkpoint is None or pubkey is None:
        raise CLIError(
            "usage",
            "--checkpoint and --pubkey go together",
            "pass the checkpoint file or directory and the public key it was signed with",
        )
    try:
        key = load_verify_key(pubkey)
    except (ValueError, OSError) as exc:
        raise CLIError(
            "bad_key",
            f"cannot read the public key {pubkey}: {exc}",
            "pass the PEM public key written by 'cra trace keygen' (PREFIX.pub)",
        ) from exc
    path = Path(checkpoint)
    try:
        found = read_checkpoints(path, log_id) if path.is_dir() else _read_one(path)
    except (ValueError, OSError) as exc:
        raise CLIError(
            "bad_checkpoint",
            f"cannot read checkpoints from {checkpoint}: {exc}",
            "pass a .checkpoints.jsonl file written by 'cra trace checkpoint'",
        ) from exc
    if not found:
        raise CLIError(
            "bad_checkpoint",
            f"no checkpoints {'for this log ' if log_id else ''}in {checkpoint}",
            "sign one with 'cra trace checkpoint SESSION --key KEY'",
        )
    return found, key


def _read_one(path: Path) -> list[Any]:
    import json

    from cra_agents.trace import Checkpoint

    return [
        Checkpoint.from_dict(json.loads(line))
        for line in path.read_text("utf-8").splitlines()
        if line.strip()
    ]
