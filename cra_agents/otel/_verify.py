"""Audit tools for exported spans: read OTLP/JSON back and check its chain links.

Kept apart from the code that emits spans: these check what a collector received against the
stored chain, whoever emitted it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from cra_agents import semconv as sc
from cra_agents._exceptions import InvalidRequestError
from cra_agents.protocol import TraceEvent
from cra_agents.runtime import Runtime
from cra_agents.trace import ChainVerification, TraceStore, verify_chain

__all__ = [
    "ExportedSpan",
    "SpanLinkProblem",
    "SpanVerification",
    "read_otlp_json",
    "verify_spans",
]


@dataclass(frozen=True)
class ExportedSpan:
    """A span as a collector recorded it (ids in lower-case hex)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    attributes: Mapping[str, Any]
    status_code: str = "UNSET"


def read_otlp_json(path: str | Path) -> list[ExportedSpan]:
    """Spans from an OTLP/JSON file (one ``ExportTraceServiceRequest`` per line or in total).

    The OpenTelemetry Collector's ``file`` exporter writes this format.

    Raises:
        InvalidRequestError: the file is not OTLP/JSON.
    """
    text = Path(path).read_bytes()
    spans: list[ExportedSpan] = []
    documents: list[Any]
    try:
        documents = [orjson.loads(text)]
    except orjson.JSONDecodeError:
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                documents.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise InvalidRequestError(
                    f"{path}:{number}: not OTLP/JSON ({exc})",
                    details={"reason": "not_otlp_json", "line": number},
                ) from exc
    for document in documents:
        spans.extend(_otlp_spans(document, path))
    return spans


_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _otlp_spans(document: Any, path: object) -> Iterator[ExportedSpan]:
    if not isinstance(document, dict) or "resourceSpans" not in document:
        raise InvalidRequestError(
            f"{path}: expected OTLP/JSON with resourceSpans",
            details={"reason": "not_otlp_json"},
        )
    for resource in document["resourceSpans"] or []:
        for scope in resource.get("scopeSpans") or []:
            for span in scope.get("spans") or []:
                status = (span.get("status") or {}).get("code", 0)
                yield ExportedSpan(
                    name=span.get("name", ""),
                    trace_id=str(span.get("traceId", "")).lower(),
                    span_id=str(span.get("spanId", "")).lower(),
                    parent_span_id=str(span.get("parentSpanId") or "").lower() or None,
                    attributes={
                        a["key"]: _otlp_value(a.get("value") or {})
                        for a in span.get("attributes") or []
                    },
                    status_code=_STATUS.get(status, str(status))
                    if isinstance(status, int)
                    else str(status).removeprefix("STATUS_CODE_"),
                )


def _otlp_value(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in value["arrayValue"].get("values") or []]
    return None


@dataclass(frozen=True)
class SpanLinkProblem:
    """A span whose chain link does not match the stored chain."""

    span_name: str
    span_id: str
    session_id: str
    sequence: int
    problem: Literal["missing_event", "hash_mismatch", "previous_hash_mismatch", "bad_link"]
    detail: str


@dataclass
class SpanVerification:
    """The outcome of :func:`verify_spans`; truthy when every link matches a valid chain."""

    checked_links: int = 0
    spans_without_link: int = 0
    problems: list[SpanLinkProblem] = field(default_factory=list)
    chains: dict[str, ChainVerification] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """Every link matches, and every chain the spans point into verifies."""
        return not self.problems and all(self.chains.values())

    def __bool__(self) -> bool:
        return self.valid

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "valid": self.valid,
            "checked_links": self.checked_links,
            "spans_without_link": self.spans_without_link,
            "problems": [asdict(p) for p in self.problems],
            "chains": {k: v.as_dict() for k, v in self.chains.items()},
        }


def verify_spans(
    spans: Iterable[ExportedSpan],
    store: TraceStore | Runtime,
    *,
    check_chains: bool = True,
) -> SpanVerification:
    """Check the TRACE links carried by exported spans against the stored chain.

    For every span with ``cra.trace.event_hash``: the stored event at its session and sequence
    must have that hash and previous hash (and the outcome link likewise); with
    ``check_chains`` every session referenced is verified end to end as well.
    """
    source: TraceStore = store.store if isinstance(store, Runtime) else store
    report = SpanVerification()
    by_session: dict[str, dict[int, TraceEvent]] = {}

    def stored(session_id: str) -> dict[int, TraceEvent]:
        hit = by_session.get(session_id)
        if hit is None:
            events = list(source.read(session_id))
            hit = by_session[session_id] = {e.sequence: e for e in events}
            if check_chains:
                report.chains[session_id] = verify_chain(events)
        return hit

    def check(span: ExportedSpan, session_id: str, sequence: Any, expected: Any, prev: Any) -> None:
        if not isinstance(sequence, int) or not isinstance(expected, str):
            report.problems.append(
                SpanLinkProblem(
                    span.name, span.span_id, session_id, -1, "bad_link", "malformed attributes"
                )
            )
            return
        report.checked_links += 1
        event = stored(session_id).get(sequence)
        if event is None:
            problem = SpanLinkProblem(
                span.name, span.span_id, session_id, sequence, "missing_event", "not stored"
            )
        elif event.event_hash != expected:
            problem = SpanLinkProblem(
                span.name,
                span.span_id,
                session_id,
                sequence,
                "hash_mismatch",
                f"span {expected}, stored {event.event_hash}",
            )
        elif prev is not None and event.previous_event_hash != prev:
            problem = SpanLinkProblem(
                span.name,
                span.span_id,
                session_id,
                sequence,
                "previous_hash_mismatch",
                f"span {prev}, stored {event.previous_event_hash}",
            )
        else:
            return
        report.problems.append(problem)

    for span in spans:
        attrs = span.attributes
        session_id = attrs.get(sc.CRA_SESSION_ID)
        if sc.CRA_TRACE_EVENT_HASH not in attrs or not isinstance(session_id, str):
            report.spans_without_link += 1
            continue
        check(
            span,
            session_id,
            attrs.get(sc.CRA_TRACE_SEQUENCE),
            attrs.get(sc.CRA_TRACE_EVENT_HASH),
            attrs.get(sc.CRA_TRACE_PREVIOUS_HASH),
        )
        if sc.CRA_OUTCOME_EVENT_HASH in attrs:
            check(
                span,
                session_id,
                attrs.get(sc.CRA_OUTCOME_SEQUENCE),
                attrs.get(sc.CRA_OUTCOME_EVENT_HASH),
                None,
            )
    return report
