"""Where a command's trace comes from: a ``.trace.jsonl`` file, or a session in a store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cra_agents.cli._output import CLIError
from cra_agents.trace import TraceStore, open_store

__all__ = ["Source", "StoreRef", "load_checkpoints", "resolve_target"]

_DEFAULT = "sqlite://.cra/traces.db"


@dataclass
class StoreRef:
    """A store URL, opened on first use and never created by a read-only command."""

    url: str | None
    _store: TraceStore | None = field(default=None, init=False, repr=False)

    @property
    def label(self) -> str:
        """The URL the command reads."""
        return self.url or os.environ.get("CRA_AGENTS_STORE") or _DEFAULT

    def open(self) -> TraceStore:
        """The store; it must already exist.

        Raises:
            CLIError: no store there, or an unknown URL.
        """
        if self._store is not None:
            return self._store
        url = self.label
        scheme, sep, rest = url.partition("://")
        if sep and scheme in ("sqlite", "jsonl") and rest and not Path(rest).exists():
            raise CLIError(
                "store_not_found",
                f"there is no trace store at {url}",
                "pass --store URL (sqlite://FILE or jsonl://DIR), set CRA_AGENTS_STORE, or run "
                "this from the directory whose .cra/ holds the traces",
            )
        if scheme == "memory":
            raise CLIError(
                "store_not_readable",
                "memory:// stores live inside one process and cannot be read from here",
                "configure the runtime with sqlite:// or jsonl:// to inspect its traces",
            )
        try:
            self._store = open_store(url, durable=False)
        except (ValueError, OSError) as exc:
            raise CLIError(
                "store_unusable",
                f"cannot open the trace store {url}: {exc}",
                "use sqlite://FILE or jsonl://DIR",
            ) from exc
        return self._store

    def sessions(self) -> list[str]:
        """Session ids, oldest first."""
        return self.open().sessions()

    def close(self) -> None:
        """Close the store if it was opened."""
        if self._store is not None:
            self._store.close()
            self._store = None


@dataclass
class Source:
    """One session's trace, from a file or a store."""

    label: str
    session_id: str | None
    path: Path | None = None
    store: StoreRef | None = None

    def events(self) -> list[dict[str, Any]]:
        """The events as dicts, in stored order.

        Raises:
            CLIError: the file holds something other than TRACE events.
        """
        from cra_agents.replay import load_events

        if self.path is not None:
            try:
                return load_events(self.path)
            except (ValueError, OSError) as exc:
                raise CLIError(
                    "bad_trace_file",
                    f"{self.path} is not a readable TRACE file: {exc}",
                    f"run 'cra trace verify {self.path}' to locate the bad line",
                ) from exc
        if self.store is None or self.session_id is None:  # pragma: no cover - invariant
            raise CLIError("internal", "a source without a file or a session", "report it")
        return [e.model_dump(mode="json") for e in self.store.open().read(self.session_id)]


def resolve_target(target: str, store: StoreRef) -> Source:
    """A file path, a session id, a unique prefix of one, or ``last``.

    Raises:
        CLIError: nothing matches, or a prefix matches several sessions.
    """
    path = Path(target)
    if path.is_file():
        return Source(str(path), None, path=path)
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
    """The sources named on the command line, or every session with ``--all``.

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
        yield resolve_target(target, store)


def load_checkpoints(
    checkpoint: str | None, pubkey: str | None, log_id: str | None
) -> tuple[list[Any], Any]:
    """Checkpoints (from a ``.checkpoints.jsonl`` file or a directory) and the verify key.

    Raises:
        CLIError: only one of the two options, or unreadable files.
    """
    from cra_agents.trace import Checkpoint, load_verify_key, read_checkpoints

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
        if path.is_dir():
            if log_id is None:
                raise CLIError(
                    "usage",
                    "a checkpoint directory needs a session to pick its file",
                    "pass the checkpoint file itself",
                )
            found = read_checkpoints(path, log_id)
        else:
            import json

            found = [
                Checkpoint.from_dict(json.loads(line))
                for line in path.read_text("utf-8").splitlines()
                if line.strip()
            ]
    except (ValueError, OSError) as exc:
        raise CLIError(
            "bad_checkpoint",
            f"cannot read checkpoints from {checkpoint}: {exc}",
            "pass a .checkpoints.jsonl file written by 'cra trace checkpoint'",
        ) from exc
    if not found:
        raise CLIError(
            "bad_checkpoint",
            f"no checkpoints for this log in {checkpoint}",
            "sign one with 'cra trace checkpoint SESSION --key KEY'",
        )
    return found, key
