"""The one strict reader of ``.trace.jsonl`` files: verify, replay, report and the CLI use it.

Every line is parsed by :func:`~cra_agents._safejson.loads_strict`: duplicate keys (a later key
could override a denial), ``NaN``, out-of-range integers, bad UTF-8 and lines over 64 MiB are
refused, and nothing is coerced. The first unreadable line ends the reading. An unreadable
*last* line without its newline is what a crash leaves while writing: it is reported as
:class:`TornTail`, never as tampering.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cra_agents._exceptions import TraceError
from cra_agents._safejson import JSONInputError, loads_strict
from cra_agents.protocol import TraceEvent

__all__ = [
    "INDEX_MISMATCH",
    "MAX_LINE_BYTES",
    "TornTail",
    "check_indexed",
    "iter_jsonl",
    "read_events",
]

#: The :class:`~cra_agents.TraceError` code a store raises when what it keeps beside the
#: hashed events (a file name, a session key, an id or type column) disagrees with them.
INDEX_MISMATCH = "TRACE_INDEX_MISMATCH"


def check_indexed(
    event: TraceEvent,
    session_id: str,
    *,
    sequence: int | None = None,
    event_type: str | None = None,
) -> TraceEvent:
    """``event`` if it is what the store's index says it is (session, sequence, type).

    Stores answer reads from the hashed event, never from an index beside it; an index that
    disagrees was changed behind the writer's back, and no reader may act on it.

    Raises:
        TraceError: code :data:`INDEX_MISMATCH`; the store was tampered with.
    """
    said = {"session_id": session_id, "sequence": sequence, "event_type": event_type}
    for name, value in said.items():
        if value is not None and getattr(event, name) != value:
            raise TraceError(
                f"the store lists event {event.event_id} under {name} {value!r}, but the "
                f"hashed event says {getattr(event, name)!r}: the store's index was changed "
                "(run 'cra trace verify --all')",
                code=INDEX_MISMATCH,
                details={"reason": "index_mismatch", "field": name, "session_id": session_id},
            )
    return event


#: The longest line (one event) the reader accepts.
MAX_LINE_BYTES = 64 * 1024 * 1024


class TornTail(ValueError):  # noqa: N818 - a condition of the file, not a failure of ours
    """The last line of a trace file is incomplete: a crash cut it while it was written.

    The verifier reports it as ``torn_tail``; :func:`~cra_agents.trace.repair_torn_tail` cuts
    it off explicitly. It is a ``ValueError``, so callers that refuse any unreadable file need
    not tell it apart.
    """


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any] | ValueError]:
    """The JSON objects of a trace file, line by line, up to its first unreadable line.

    Yields each line's object; an unreadable line is yielded as an error (then reading
    stops): :class:`TornTail` for a last line that lacks its newline, else a ``ValueError``
    naming what is wrong (a :class:`~cra_agents._safejson.JSONInputError`, or "line N is not
    a JSON object").

    Raises:
        OSError: the file cannot be read.
    """
    data = Path(path).read_bytes()
    if not data:
        return
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")
    if complete:
        lines.pop()
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        try:
            value = loads_strict(line, max_bytes=MAX_LINE_BYTES)
        except JSONInputError as exc:
            yield TornTail(str(exc)) if last and not complete else exc
            return
        if not isinstance(value, dict):
            yield ValueError(f"line {index + 1} is not a JSON object")
            return
        yield value


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every event of a trace file as a dict, each checked as a TRACE event (nothing coerced).

    Raises:
        TornTail: the last line is incomplete (a ``ValueError``).
        ValueError: a line is not JSON, not an object, or not a valid TRACE event; the
            message names the file and the line.
        OSError: the file cannot be read.
    """
    events: list[dict[str, Any]] = []
    for number, item in enumerate(iter_jsonl(path), 1):
        if isinstance(item, TornTail):
            raise TornTail(f"{path}: line {number}: {item}")
        if isinstance(item, ValueError):
            raise ValueError(f"{path}: line {number}: {item}")
        try:
            TraceEvent.model_validate(item, strict=True)
        except ValidationError as exc:
            raise ValueError(
                f"{path}: line {number} is not a TRACE event: "
                f"{exc.errors(include_url=False)[0]['msg']}"
            ) from exc
        events.append(item)
    return events
