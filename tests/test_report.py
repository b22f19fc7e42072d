"""The visual trace report: timelines of real sessions, the SVG, and the HTML page."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from typing import Any

import pytest

import cra_agents as cra
from cra_agents._ids import new_id
from cra_agents.report import (
    CONTENT_SECURITY_POLICY,
    DECISION_COLORS,
    Timeline,
    ToolCall,
    _fmt_ms,
    _fmt_offset,
    _nice_step,
    render_report,
    timeline,
    write_report,
)
from cra_agents.trace import (
    JsonlStore,
    SessionChain,
    generate_signing_key,
    sign_checkpoint,
)
from tests.conftest import EXAMPLES_DIR

GITHUB_OPS = EXAMPLES_DIR / "github-ops"
HOSTILE = "<script>alert(1)</script>"
MERGE_ARGS = {"repo": "acme/app", "pr_number": 7, "expected_head_sha": "a" * 40}


def approve(request: cra.ApprovalRequest) -> cra.ApprovalDecision:
    return cra.ApprovalDecision(True, "alice@example.com", "reviewed the diff")


def run_session(
    store: Any = "memory://", *, shadow: bool = False, end: bool = True
) -> tuple[cra.Runtime, str]:
    """A session with one call of each kind: allowed, denied, approved, failed."""
    runtime = cra.Runtime([GITHUB_OPS], store=store, approval_handler=approve, shadow=shadow)
    session = runtime.create_session("triage-bot", "Triage bug reports and label them")
    sid = session.session_id

    def call(action: str, arguments: dict[str, Any], error: Exception | None = None) -> None:
        try:
            auth = runtime.authorize(sid, action, arguments)
        except cra.ActionDeniedError:
            return
        time.sleep(0.002)
        runtime.record_outcome(auth, result={"number": 1}, error=error)

    call("github.issue.list", {"repo": "acme/app"})
    call("github.repo.delete", {"repo": "acme/app", "confirm_name": "acme/app"})
    call("github.pr.merge", MERGE_ARGS)
    call("github.issue.create", {"repo": "acme/app", "title": "x"}, RuntimeError("API 502"))
    if end:
        runtime.end_session(sid)
    return runtime, sid


@pytest.fixture(scope="module")
def guarded_events() -> list[cra.TraceEvent]:
    runtime, sid = run_session()
    try:
        return runtime.trace_events(sid)
    finally:
        runtime.close()


@pytest.fixture(scope="module")
def resolve_events() -> list[cra.TraceEvent]:
    """A resolve (policies, context) and two executes through the CARP API."""
    with cra.Runtime([GITHUB_OPS], store="memory://") as runtime:
        goal = "Triage bug reports, label them, write release notes"
        session = runtime.create_session("triage-bot", goal)
        resolution = runtime.resolve(cra.resolve_request(session))
        sid, rid = session.session_id, resolution.resolution_id
        runtime.execute(cra.execute_request(session, rid, "github.issue.list", {"repo": "a/b"}))
        with pytest.raises(cra.ApprovalRequiredError):
            runtime.execute(cra.execute_request(session, rid, "github.pr.merge", MERGE_ARGS))
        runtime.end_session(sid)
        return runtime.trace_events(sid)


def chain(*events: tuple[str, Mapping[str, Any]]) -> list[cra.TraceEvent]:
    """A valid hash chain of arbitrary events (for shapes the runtime does not write)."""
    session = SessionChain(new_id(), new_id())
    for event_type, payload in events:
        session.append(event_type, payload)
    return session.flush()


def dicts(events: Sequence[cra.TraceEvent]) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for e in events]


class TestTimeline:
    def test_one_call_of_each_kind(self, guarded_events):
        """Allowed, denied, approved and failed calls with their policies and reasons."""
        tl = timeline(guarded_events)
        assert (tl.agent_id, tl.goal, tl.end_reason) == (
            "triage-bot",
            "Triage bug reports and label them",
            "completed",
        )
        assert tl.session_id == guarded_events[0].session_id
        assert tl.started_at == guarded_events[0].timestamp
        assert tl.ended_at == guarded_events[-1].timestamp
        listed, deleted, merged, created = tl.calls
        assert (listed.decision, listed.outcome, listed.policy_id) == (
            "allowed",
            "executed",
            "allow-read",
        )
        assert (deleted.decision, deleted.outcome, deleted.policy_id) == (
            "denied",
            None,
            "deny-repo-delete",
        )
        assert deleted.reason == "Deleting repositories is never automated"
        assert (merged.decision, merged.approver, merged.approval_reason) == (
            "approved",
            "alice@example.com",
            "reviewed the diff",
        )
        assert merged.policy_id == "approve-merge"
        assert (created.decision, created.outcome, created.status) == (
            "allowed",
            "failed",
            "failed",
        )
        assert (created.error_code, created.error_message) == ("RuntimeError", "API 502")
        requested = [e for e in guarded_events if e.event_type == "action.requested"]
        assert [c.sequence for c in tl.calls] == [e.sequence for e in requested]
        assert [c.started_at for c in tl.calls] == [e.timestamp for e in requested]
        assert [c.execution_id for c in tl.calls] == [e.payload["execution_id"] for e in requested]
        outcome = next(e for e in guarded_events if e.event_type == "action.failed")
        assert created.ended_at == outcome.timestamp
        assert created.duration_ms == float(outcome.payload["duration_ms"])
        assert deleted.duration_ms is not None and deleted.duration_ms >= 0
        assert tl.counts() == {
            "allowed": 1,
            "approved": 1,
            "denied": 1,
            "failed": 1,
            "pending": 0,
            "calls": 4,
            "executed": 2,
        }
        assert tl.approvals == [merged]
        assert tl.duration_ms == float(guarded_events[-1].payload["duration_ms"])

    def test_models_dicts_and_jsonl_give_the_same_timeline(self, tmp_path):
        """TraceEvent models, plain dicts and a .trace.jsonl path are all accepted."""
        runtime, sid = run_session(JsonlStore(tmp_path))
        events = runtime.trace_events(sid)
        runtime.close()
        path = tmp_path / f"{sid}.trace.jsonl"
        from_models = timeline(events).as_dict()
        assert timeline(dicts(events)).as_dict() == from_models
        assert timeline(path).as_dict() == from_models
        assert timeline(str(path)).as_dict() == from_models

    def test_jsonl_is_read_up_to_a_bad_line(self, tmp_path, guarded_events):
        """A torn or foreign line ends the events; the verifier reports it (see report)."""
        lines = [json.dumps(e) for e in dicts(guarded_events)]
        torn = tmp_path / "torn.trace.jsonl"
        torn.write_text("\n".join(lines[:5]) + "\n\n" + lines[5][:40], "utf-8")
        assert len(timeline(torn).events) == 5
        foreign = tmp_path / "foreign.trace.jsonl"
        foreign.write_text("\n".join([*lines[:3], "[1, 2]", *lines[3:]]) + "\n", "utf-8")
        assert len(timeline(foreign).events) == 3

    def test_resolutions_context_and_execute_calls(self, resolve_events):
        """Resolve: policies and context per resolution; execute calls carry its id."""
        tl = timeline(resolve_events)
        (resolution,) = tl.resolutions
        completed = next(e for e in resolve_events if e.event_type == "carp.resolution.completed")
        assert resolution["resolution_id"] == completed.payload["resolution_id"]
        assert resolution["decision_type"] == "requires_approval"
        assert resolution["allowed_count"] == completed.payload["allowed_count"]
        assert resolution["denied_count"] == completed.payload["denied_count"]
        assert resolution["operation"] == "resolve"
        assert resolution["atlas_ids"] == ["com.example.github-ops"]
        completed_at = completed.sequence  # execute calls record their own policy.evaluated
        evaluated = [
            e
            for e in resolve_events
            if e.event_type == "policy.evaluated" and e.sequence < completed_at
        ]
        assert len(resolution["policies"]) == len(evaluated)
        assert {"action_id": "github.repo.delete", "policy_id": "deny-repo-delete"}.items() <= (
            next(p for p in resolution["policies"] if p["action_id"] == "github.repo.delete")
        ).items()
        injected = [e for e in resolve_events if e.event_type == "context.injected"]
        assert [b["block_id"] for b in tl.context_blocks] == [
            e.payload["block_id"] for e in injected
        ]
        assert resolution["context_block_ids"] == [b["block_id"] for b in tl.context_blocks]
        assert resolution["context_block_count"] == len(injected)
        for block in tl.context_blocks:
            assert block["resolution_id"] == resolution["resolution_id"]
            assert block["source"] == "com.example.github-ops"
            assert type(block["priority"]) is int and type(block["token_count"]) is int
        listed, merged = tl.calls
        assert (listed.decision, listed.outcome, listed.policy_id) == (
            "allowed",
            None,
            "allow-read",
        )
        assert listed.resolution_id == resolution["resolution_id"]
        assert (merged.decision, merged.reason, merged.policy_id) == (
            "denied",
            "approval_required",
            "approve-merge",
        )

    def test_a_request_without_decision_is_pending(self, guarded_events):
        """A log that stops right after action.requested shows the call as pending."""
        cut = next(i for i, e in enumerate(guarded_events) if e.event_type == "action.requested")
        tl = timeline(guarded_events[: cut + 1])
        (call,) = tl.calls
        assert (call.decision, call.outcome, call.ended_at, call.duration_ms) == (
            "pending",
            None,
            None,
            None,
        )
        assert tl.ended_at is None and tl.end_reason is None
        assert tl.counts()["pending"] == 1
        assert tl.duration_ms is None
        assert 'class="bar bar-pending"' in tl.svg()

    def test_shadow_mode_calls_run_and_say_why_they_would_not(self):
        """Shadow mode: the denied call runs, flagged shadow, with the would-be reason."""
        runtime, sid = run_session(shadow=True)
        events = runtime.trace_events(sid)
        runtime.close()
        calls = timeline(events).calls
        deleted = next(c for c in calls if c.action_id == "github.repo.delete")
        assert (deleted.decision, deleted.outcome, deleted.shadow) == ("allowed", "executed", True)
        assert deleted.policy_id == "deny-repo-delete"
        assert deleted.reason == "Deleting repositories is never automated"
        merged = next(c for c in calls if c.action_id == "github.pr.merge")
        assert (merged.decision, merged.approver) == ("allowed", None)

    def test_rust_core_shapes(self):
        """Decisions without execution ids pair by action; Rust context and count keys."""
        events = chain(
            ("session.started", {"agent_id": "a", "goal": "g"}),
            ("carp.request.received", {"request_id": "r1", "operation": "resolve", "goal": "g"}),
            ("policy.evaluated", {"action_id": "x.get", "result": "Allow"}),
            (
                "context.injected",
                {"context_id": "c1", "source_atlas": "at", "token_estimate": 3, "name": "N"},
            ),
            (
                "context.injected",
                {"context_id": "c2", "metadata": {"name": "From metadata"}, "priority": 5},
            ),
            (
                "carp.resolution.completed",
                {"resolution_id": "r1", "decision_type": "allow", "context_count": 2},
            ),
            ("action.requested", {"action_id": "x.get", "execution_id": "e1"}),
            ("action.requested", {"action_id": "x.put", "execution_id": "e2"}),
            ("action.requested", {"action_id": "x.put", "execution_id": "e3"}),
            ("action.approved", {"action_id": "x.get", "resolution_id": "r1"}),
            ("action.approved", {"action_id": "x.put"}),
            ("action.denied", {"action_id": "x.put", "reason": "no", "policy_id": "p"}),
            ("action.executed", {"action_id": "x.get", "duration_ms": 12.5}),
        )
        tl = timeline(events)
        got, put, put_again = tl.calls
        # Without execution ids a decision goes to the latest undecided call of its action.
        assert (put_again.execution_id, put_again.decision) == ("e3", "allowed")
        assert (got.execution_id, got.decision, got.outcome, got.duration_ms) == (
            "e1",
            "allowed",
            "executed",
            12.5,
        )
        assert (put.decision, put.reason, put.policy_id) == ("denied", "no", "p")
        assert tl.resolutions[0]["context_block_count"] == 2.0
        assert tl.resolutions[0]["risk_tier"] == "low"
        assert tl.resolutions[0]["policies"] == [
            {"action_id": "x.get", "policy_id": None, "result": "Allow"}
        ]
        first, second = tl.context_blocks
        assert (first["block_id"], first["source"], first["token_count"], first["name"]) == (
            "c1",
            "at",
            3.0,
            "N",
        )
        assert (second["name"], second["priority"], second["token_count"]) == (
            "From metadata",
            5.0,
            None,
        )

    def test_partial_and_malformed_traces_do_not_break_it(self):
        """Events from mid-session, odd payload types and unknown types are tolerated."""
        events = chain(
            ("carp.resolution.cached", {"resolution_id": "r0", "cache_hit": True}),
            ("policy.evaluated", {"action_id": "x.get", "policy_id": "p", "result": "allow"}),
            ("policy.violated", {"action_id": "x.none", "policy_id": "p"}),
            ("context.injected", {"block_id": "outside"}),
            ("action.executed", {"action_id": "x.get", "execution_id": "e9", "duration_ms": True}),
            ("action.approved", {"action_id": "x.new", "approver": 42}),
            ("action.custom", {"action_id": "x.get"}),
            ("myapp.step.done", {"n": 1}),
            ("session.ended", {"reason": "cancelled"}),
        )
        raw = dicts(events)
        raw[3]["payload"] = "not an object"
        raw[4]["sequence"] = "four"
        raw[5]["sequence"] = "x"
        tl = timeline(raw)
        (cached,) = tl.resolutions
        assert (cached["resolution_id"], cached["cached"], cached["requested_at"]) == (
            "r0",
            True,
            None,
        )
        assert [(b["block_id"], b["resolution_id"]) for b in tl.context_blocks] == [("?", None)]
        orphan, approved = tl.calls
        assert (orphan.action_id, orphan.decision, orphan.outcome) == (
            "x.get",
            "allowed",
            "executed",
        )
        assert orphan.sequence == -1
        assert orphan.duration_ms == 0.0  # a bool is no duration: from the timestamps
        assert (approved.decision, approved.approver) == ("approved", "42")
        assert tl.agent_id is None and tl.end_reason == "cancelled"
        assert tl.duration_ms is not None  # from the timestamps: no duration_ms recorded
        assert timeline([{"event_type": "action.requested", "payload": {}}]).calls[0].sequence == -1
        bare = timeline([{"event_type": "action.requested", "sequence": 3, "timestamp": "bad"}])
        assert bare.calls[0].action_id == "?"
        assert bare.duration_ms is None
        odd = {"event_type": "context.injected", "payload": {"block_id": "b", "priority": math.nan}}
        assert timeline([odd]).context_blocks[0]["priority"] is None

    def test_more_than_one_session_is_refused(self, guarded_events, resolve_events):
        """A timeline is of one session."""
        with pytest.raises(ValueError, match="one session"):
            timeline([*guarded_events, *resolve_events])

    def test_items_must_be_events(self):
        """Anything but TraceEvent models and mappings is a TypeError."""
        with pytest.raises(TypeError, match="TraceEvent or mapping"):
            timeline([42])  # type: ignore[list-item]

    def test_empty(self):
        """No events: an empty timeline that still renders."""
        tl = timeline([])
        assert (tl.session_id, tl.agent_id, tl.started_at, tl.calls) == (None, None, None, [])
        assert "No tool calls recorded" in tl.svg()
        assert tl.counts()["calls"] == 0

    def test_as_dict_is_json(self, guarded_events, resolve_events):
        """as_dict() is plain JSON, and a call's dict includes its status."""
        for events in (guarded_events, resolve_events):
            data = json.loads(json.dumps(timeline(events).as_dict()))
            assert data["counts"]["calls"] == len(data["calls"])
        call = timeline(guarded_events).calls[3]
        assert call.as_dict()["status"] == "failed"
        assert call.as_dict()["decision"] == "allowed"


def parse_svg(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 - the report's own output, not untrusted XML


NS = {"s": "http://www.w3.org/2000/svg"}


class TestSvg:
    def test_one_bar_per_call_coloured_by_status(self, guarded_events):
        """Rows in call order; fill colour from the status; labels are the action ids."""
        tl = timeline(guarded_events)
        root = parse_svg(tl.svg())
        bars = [r for r in root.iter(f"{{{NS['s']}}}rect") if "bar" in r.get("class", "").split()]
        assert [b.get("fill") for b in bars] == [DECISION_COLORS[c.status] for c in tl.calls]
        labels = [t.text for t in root.iter(f"{{{NS['s']}}}text") if t.get("class") == "label"]
        assert labels == [c.action_id for c in tl.calls]
        assert root.get("width") == "960"
        titles = [t.text or "" for t in root.iter(f"{{{NS['s']}}}title")]
        denied = next(t for t in titles if t.startswith("github.repo.delete"))
        assert "policy: deny-repo-delete" in denied
        assert "reason: Deleting repositories is never automated" in denied
        assert any("approver: alice@example.com" in t for t in titles)
        assert any("error: RuntimeError API 502" in t for t in titles)

    def test_bars_scale_to_the_session(self):
        """A call spanning the middle half of the session gets about half the chart."""
        events = [
            _event(0, "session.started", "2025-01-01T00:00:00+00:00", {"agent_id": "a"}),
            _event(1, "action.requested", "2025-01-01T00:00:01+00:00", {"action_id": "a.b"}),
            _event(2, "action.approved", "2025-01-01T00:00:01+00:00", {"action_id": "a.b"}),
            _event(3, "action.executed", "2025-01-01T00:00:03+00:00", {"action_id": "a.b"}),
            _event(4, "action.requested", "2025-01-01T00:00:03+00:00", {"action_id": "a.c"}),
            _event(5, "action.denied", "2025-01-01T00:00:03+00:00", {"action_id": "a.c"}),
            _event(6, "session.ended", "2025-01-01T00:00:04+00:00", {"reason": "completed"}),
        ]
        tl = timeline(events)
        assert tl.calls[0].duration_ms == 2000.0  # no recorded duration: from timestamps
        assert tl.duration_ms == 4000.0
        root = parse_svg(tl.svg(width=1000))
        long, instant = [r for r in root.iter(f"{{{NS['s']}}}rect") if "bar" in r.get("class", "")]
        x0 = 260 + 8  # the label column is 30 % of the width, at most 260 px
        chart = 1000 - 16 - x0
        assert float(long.get("width", 0)) == pytest.approx(chart / 2, abs=1)
        assert float(long.get("x", 0)) == pytest.approx(x0 + chart / 4, abs=1)
        assert float(instant.get("width", 0)) == 4  # instantaneous calls stay visible
        ticks = [t.text for t in root.iter(f"{{{NS['s']}}}text") if t.get("class") == "tick-label"]
        assert ticks == ["0 s", "1 s", "2 s", "3 s", "4 s"]

    def test_axis_labels_for_short_and_long_sessions(self):
        """Sub-millisecond and minute-long sessions get readable tick labels."""
        short = timeline(
            [
                _event(0, "session.started", "2025-01-01T00:00:00+00:00", {}),
                _event(1, "action.requested", "2025-01-01T00:00:00.000400+00:00", {}),
            ]
        )
        ticks = _ticks(short.svg())
        assert ticks[:2] == ["0 ms", "0.2 ms"]  # spans shorter than 1 ms are shown as 1 ms
        assert ticks[-1] == "1.0 ms"
        long = timeline(
            [
                _event(0, "session.started", "2025-01-01T00:00:00+00:00", {}),
                _event(1, "session.ended", "2025-01-01T00:05:00+00:00", {}),
            ]
        )
        assert _ticks(long.svg())[:2] == ["0 s", "50 s"]

    def test_helpers(self):
        """Tick steps are 1, 2 or 5 times a power of ten; durations read naturally."""
        assert [_nice_step(x) for x in (0.7, 1.0, 1.5, 3, 7, 0)] == [1, 1, 2, 5, 10, 0.001]
        assert _fmt_offset(2000, 1000) == "2 s"
        assert _fmt_offset(0.25, 0.05) == "0.25 ms"
        assert _fmt_ms(None) == "—"
        assert _fmt_ms(3) == "3 ms"
        assert _fmt_ms(2.5) == "2.5 ms"
        assert _fmt_ms(1500) == "1.50 s"
        assert _fmt_ms(125_000) == "2 min 5 s"

    def test_long_labels_are_cut_and_shadow_calls_dashed(self):
        """A long action id is shortened with an ellipsis; shadow bars get a dashed outline."""
        action = "com.example." + "very" * 30 + ".action"
        events = chain(
            ("action.requested", {"action_id": action, "execution_id": "e", "shadow": True}),
            ("action.approved", {"action_id": action, "execution_id": "e", "shadow": True}),
        )
        svg = timeline(events).svg(width=400)
        label = next(t.text for t in parse_svg(svg).iter() if t.get("class") == "label")
        assert label is not None and label.endswith("…") and len(label) < len(action)
        assert 'stroke-dasharray="3 2"' in svg
        assert "(shadow mode)" in svg

    def test_escaping_and_namespace(self):
        """Trace strings are escaped in labels and tooltips; xmlns only when asked."""
        events = chain(
            ("session.started", {"agent_id": HOSTILE, "goal": HOSTILE}),
            ("action.requested", {"action_id": HOSTILE, "execution_id": "e"}),
            ("action.denied", {"action_id": HOSTILE, "execution_id": "e", "reason": HOSTILE}),
        )
        tl = timeline(events)
        for markup in (tl.svg(), tl.svg(xmlns=False), tl._repr_html_(), tl.legend_svg()):
            assert "<script" not in markup
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in tl.svg()
        parse_svg(tl.svg())  # well-formed XML
        assert "xmlns" not in tl.svg(xmlns=False)
        assert tl.svg().startswith('<svg xmlns="http://www.w3.org/2000/svg"')

    def test_notebook_html(self, guarded_events, resolve_events):
        """_repr_html_ shows the SVG, a legend with counts, and who ran the session."""
        tl = timeline(guarded_events)
        html = tl._repr_html_()
        assert html.count("<svg") == 2
        assert 'class="cra-legend"' in html
        assert "approved by a person (1)" in html and "denied (1)" in html
        assert "triage-bot" in html and "4 tool calls" in html
        assert "CARP resolution" not in html
        resolved = timeline(resolve_events)._repr_html_()
        assert "CARP resolution (1)" in resolved
        assert 'class="resolution-marker"' in resolved
        assert "1 tool call<" not in resolved
        single = chain(("action.requested", {"action_id": "a.b", "execution_id": "e"}))
        assert "1 tool call<" in timeline(single)._repr_html_()


def _event(sequence: int, kind: str, timestamp: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "session_id": "s",
        "sequence": sequence,
        "timestamp": timestamp,
        "event_type": kind,
        "payload": payload,
        "event_hash": f"{sequence:064x}",
    }


def _ticks(svg: str) -> list[str]:
    return re.findall(r'class="tick-label"[^>]*>([^<]*)<', svg)


class _Page(HTMLParser):
    """Collects what the report must and must not contain."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.scripts = 0
        self.styles: list[str] = []
        self.script_text: list[str] = []
        self.csp: str | None = None
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        anchor = values.get("id")
        if anchor:
            self.ids.append(anchor)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "srcset", "data", "poster"):
                self.urls.append((tag, name, value or ""))
            assert name != "style", f"style attribute on <{tag}> (blocked by the CSP)"
            assert not name.startswith("on"), f"event handler attribute on <{tag}>"
        if tag == "meta" and values.get("http-equiv") == "Content-Security-Policy":
            self.csp = values.get("content")
        if tag == "script":
            self.scripts += 1
        if tag in ("script", "style"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "style":
            self.styles.append(data)
        elif self._in == "script":
            self.script_text.append(data)


def page(html: str) -> _Page:
    parser = _Page()
    parser.feed(html)
    parser.close()
    return parser


def sha(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


class TestReport:
    def test_sections_and_content(self, guarded_events):
        """Every section with its stable id; summary, decisions and approvals filled in."""
        html = render_report(guarded_events)
        assert html.startswith("<!DOCTYPE html>\n")
        parsed = page(html)
        for anchor in (
            "summary",
            "timeline",
            "decisions",
            "approvals",
            "chain",
            "resolutions",
            "context",
            "events",
            "raw-events",
            "decision-table",
            "decision-filters",
        ):
            assert anchor in parsed.ids
        summary = _section(html, "summary")
        assert "triage-bot" in summary and "Triage bug reports and label them" in summary
        assert guarded_events[0].session_id in summary
        assert re.search(r'data-count="denied"><b>1</b>', summary)
        assert re.search(r'data-count="calls"><b>4</b>', summary)
        assert "UTC</time>" in summary and "completed" in summary
        decisions = _section(html, "decisions")
        assert len(re.findall(r'<tr class="row-', decisions)) == 4
        assert "Deleting repositories is never automated" in decisions
        assert "approved by alice@example.com" in decisions
        assert "RuntimeError API 502" in decisions
        approvals = _section(html, "approvals")
        assert "alice@example.com" in approvals and "approve-merge" in approvals
        assert "reviewed the diff" in approvals
        timeline_html = _section(html, "timeline")
        assert timeline_html.count('class="bar bar-') == 4
        assert "<svg" in timeline_html and "cra-legend" in timeline_html
        events = _section(html, "events")
        assert "<details" in events and f"Raw events ({len(guarded_events)})" in events
        assert events.count("<tr>") == len(guarded_events) + 1
        assert "No CARP resolution" in _section(html, "resolutions")
        assert "No context block" in _section(html, "context")
        assert "<title>Trace report: triage-bot</title>" in html

    def test_self_contained_with_a_strict_csp(self, guarded_events):
        """No URL but in-page anchors; the CSP allows only the page's own style and script."""
        html = render_report(guarded_events)
        parsed = page(html)
        assert all(value.startswith("#") for _, name, value in parsed.urls if name == "href")
        assert not [u for u in parsed.urls if u[1] != "href"]
        assert "http:" not in html and "https:" not in html and "url(" not in html
        assert "@import" not in html
        assert parsed.scripts == 1
        assert parsed.csp == CONTENT_SECURITY_POLICY
        assert parsed.csp is not None and parsed.csp.startswith("default-src 'none';")
        (style,) = parsed.styles
        (script,) = parsed.script_text
        assert f"style-src {sha(style)};" in parsed.csp
        assert f"script-src {sha(script)};" in parsed.csp

    def test_trace_content_is_shown_as_text(self):
        """Markup in action ids, reasons, goals and errors is escaped everywhere."""
        events = chain(
            ("session.started", {"agent_id": HOSTILE, "goal": HOSTILE}),
            ("carp.request.received", {"request_id": HOSTILE, "goal": HOSTILE}),
            ("context.injected", {"block_id": HOSTILE, "name": HOSTILE, "source": HOSTILE}),
            ("carp.resolution.completed", {"resolution_id": HOSTILE, "decision_type": HOSTILE}),
            ("action.requested", {"action_id": HOSTILE, "execution_id": "e1"}),
            ("action.denied", {"action_id": HOSTILE, "execution_id": "e1", "reason": HOSTILE}),
            ("action.requested", {"action_id": "a.b", "execution_id": "e2"}),
            ("policy.evaluated", {"action_id": "a.b", "policy_id": HOSTILE, "result": "x"}),
            ("action.approved", {"action_id": "a.b", "execution_id": "e2", "approver": HOSTILE}),
            ("action.failed", {"execution_id": "e2", "error_code": HOSTILE}),
        )
        html = render_report(events, title=HOSTILE)
        assert page(html).scripts == 1
        assert html.count("<script") == 1
        escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
        for section in ("summary", "timeline", "decisions", "approvals", "context", "events"):
            assert escaped in _section(html, section), section
        assert f"<title>{escaped}</title>" in html
        assert f"<h1>{escaped}</h1>" in html

    def test_resolutions_and_context(self, resolve_events):
        """A resolve's decision, counts, policy results and injected blocks are listed."""
        html = render_report(resolve_events)
        resolutions = _section(html, "resolutions")
        assert "requires_approval" in resolutions
        assert "policy evaluations</summary>" in resolutions
        assert "deny-repo-delete" in resolutions
        context = _section(html, "context")
        blocks = timeline(resolve_events).context_blocks
        assert blocks
        assert context.count("<tr data-sequence=") == len(blocks)
        for block in blocks:
            assert block["block_id"] in context
        assert "No call in this session needed" in _section(html, "approvals")

    def test_chain_valid_and_invalid(self, guarded_events):
        """VALID with the head hash; a tampered payload gives INVALID with where and why."""
        valid = _section(render_report(guarded_events), "chain")
        assert '<span class="badge badge-valid">VALID</span>' in valid
        assert guarded_events[-1].event_hash in valid
        assert "<code>both</code>" in valid
        assert "No signed checkpoint given" in valid
        tampered = dicts(guarded_events)
        tampered[4]["payload"] = {**tampered[4]["payload"], "action_id": "github.repo.settings"}
        invalid = _section(render_report(tampered), "chain")
        assert '<span class="badge badge-invalid">INVALID</span>' in invalid
        assert "hash_mismatch" in invalid
        assert "<tr><th>First invalid index</th><td>4</td></tr>" in invalid
        assert guarded_events[3].event_hash in invalid  # the last valid hash

    def test_verification_is_taken_as_given(self, guarded_events):
        """A given verification is shown instead of verifying again."""
        fake = cra.ChainVerification(False, 3, None, "truncated", "too short")
        chain_html = _section(render_report(guarded_events, verification=fake), "chain")
        assert "INVALID" in chain_html and "truncated" in chain_html
        assert "<tr><th>First invalid index</th><td>—</td></tr>" in chain_html

    def test_torn_jsonl_file(self, tmp_path, guarded_events):
        """A path is verified as a file: a torn last line is reported, not hidden."""
        path = tmp_path / "s.trace.jsonl"
        lines = [json.dumps(e) for e in dicts(guarded_events)]
        path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30], "utf-8")
        chain_html = _section(render_report(path), "chain")
        assert "INVALID" in chain_html and "torn_tail" in chain_html

    def test_checkpoint_checked_by_the_verifier(self, guarded_events):
        """Checkpoint fields, a checked signature and the unverifiable tail."""
        key = generate_signing_key()
        checkpoint = sign_checkpoint(guarded_events[:-3], key)
        verification = cra.verify_chain(
            guarded_events, checkpoints=[checkpoint], verify_key=key.public_key()
        )
        html = render_report(guarded_events, checkpoint=checkpoint, verification=verification)
        chain_html = _section(html, "chain")
        assert "VALID" in chain_html
        for value in (checkpoint.head_hash, checkpoint.key_id, checkpoint.log_id):
            assert value in chain_html
        assert f"<tr><th>Size</th><td>{checkpoint.size}</td></tr>" in chain_html
        assert "checked by the verifier" in chain_html
        assert "<tr><th>Matches this log</th><td>yes</td></tr>" in chain_html
        assert "<tr><th>Unverifiable tail</th><td>3</td></tr>" in chain_html
        assert "not protected against truncation" in chain_html
        without_object = _section(render_report(guarded_events, verification=verification), "chain")
        assert f"<tr><th>Checkpoint size</th><td>{checkpoint.size}</td></tr>" in without_object
        assert "<tr><th>Unverifiable tail</th><td>3</td></tr>" in without_object

    def test_checkpoint_without_the_key(self, guarded_events):
        """Without a keyed verification the report compares sizes and hashes only."""
        key = generate_signing_key()
        size = len(guarded_events)
        cases = [
            (sign_checkpoint(guarded_events[:-1], key), "yes", "1 (from the sizes"),
            (sign_checkpoint([], key, log_id="x"), "yes (empty prefix)", f"{size} (from"),
            (
                sign_checkpoint([*guarded_events, guarded_events[0]], key),
                f"NO: the log has only {size} events",
                "<td>—</td>",
            ),
            (
                sign_checkpoint(guarded_events[::-1], key),
                "NO: the log differs at its size",
                "0 (from",
            ),
        ]
        for checkpoint, matches, tail in cases:
            chain_html = _section(render_report(guarded_events, checkpoint=checkpoint), "chain")
            assert "not checked here" in chain_html
            assert f"<tr><th>Matches this log</th><td>{matches}</td></tr>" in chain_html
            assert tail in chain_html.split("Unverifiable tail", 1)[1]

    def test_empty_log(self):
        """An empty log renders: no calls, VALID, no head hash."""
        html = render_report([])
        assert "No tool calls in this session." in _section(html, "decisions")
        assert 'id="decision-filters"' not in html and 'id="decision-table"' not in html
        chain_html = _section(html, "chain")
        assert "VALID" in chain_html and "— (empty log)" in chain_html
        assert "not ended in this log" in _section(html, "summary")
        assert "<title>Trace report: unknown agent</title>" in html

    def test_errors_pending_and_timeline_input(self):
        """error.occurred is flagged; pending calls are listed; a Timeline is accepted."""
        events = chain(
            ("session.started", {"agent_id": "a", "goal": "g"}),
            ("error.occurred", {"error_code": "x"}),
            ("action.requested", {"action_id": "a.b", "execution_id": "e"}),
        )
        tl = timeline(events)
        assert len(tl.errors) == 1
        html = render_report(tl)
        assert "error.occurred</code> event(s)" in _section(html, "summary")
        assert '<tr class="row-pending"' in _section(html, "decisions")
        assert "VALID" in _section(html, "chain")

    def test_odd_timestamps_and_shadow_rows(self):
        """Unparseable times show as recorded; shadow calls carry a badge."""
        events = [
            _event(0, "session.started", "yesterday", {"agent_id": "a"}),
            _event(1, "action.requested", "2025-01-01T00:00:00Z", {"action_id": "a.b"}),
            _event(2, "action.approved", "2025-01-01T00:00:00Z", {"action_id": "a.b"}),
            _event(3, "action.executed", "2025-01-01T00:00:00.000000001Z", {"action_id": "a.b"}),
            _event(4, "action.requested", "2025-01-01T00:00:01Z", {"action_id": "a.c"}),
            _event(5, "policy.evaluated", "2025-01-01T00:00:01Z", {"action_id": "a.c"}),
            _event(6, "policy.violated", "2025-01-01T00:00:01Z", _violation("a.c")),
            _event(7, "action.approved", "2025-01-01T00:00:01Z", _shadow("a.c")),
            _event(8, "action.failed", "2025-01-01T00:00:02Z", {"action_id": "a.c"}),
            _event(9, "carp.request.received", "later", {"request_id": "r"}),
            _event(10, "action.requested", "2025-01-01T00:00:03Z", {"action_id": "a.d"}),
            _event(11, "policy.violated", "2025-01-01T00:00:03Z", {"action_id": "a.d"}),
        ]
        html = render_report(events, verification=cra.ChainVerification(True, 12))
        assert 'class="resolution-marker"' not in html  # no time to put it at
        assert "yesterday" in _section(html, "summary")
        decisions = _section(html, "decisions")
        assert decisions.count('class="badge badge-shadow"') == 1
        assert '<td class="reason">denied_action</td>' not in decisions
        assert timeline(events).calls[-1].shadow is False
        assert '<td class="reason">would be denied</td>' in decisions
        assert re.search(r'<td class="num" data-value="" title="[^"]*">—</td>', decisions)
        assert '<span class="badge badge-failed">failed</span></td>' in decisions
        dated = render_report(events[1:], verification=cra.ChainVerification(True, 8))
        assert ">2025-01-01 00:00:00 UTC</time>" in dated
        nano = timeline(events[1:]).calls[0]
        assert nano.ended_at == "2025-01-01T00:00:00.000000001Z"
        assert "00:00:00.000000001 UTC" in _section(
            render_report(events[3:4], verification=cra.ChainVerification(True, 1)), "summary"
        )

    def test_write_report(self, tmp_path, guarded_events):
        """write_report writes UTF-8 HTML and passes its keyword arguments on."""
        target = write_report(guarded_events, tmp_path / "r.html", title="Nightly triage")
        assert target == tmp_path / "r.html"
        text = target.read_text("utf-8")
        assert "<title>Nightly triage</title>" in text
        assert text == render_report(guarded_events, title="Nightly triage")


def _violation(action_id: str) -> dict[str, Any]:
    return {
        "action_id": action_id,
        "policy_id": "p",
        "violation_type": "denied_action",
        "details": {"reason": "would be denied", "shadow": True},
    }


def _shadow(action_id: str) -> dict[str, Any]:
    return {"action_id": action_id, "policy_id": "p", "shadow": True}


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start : html.index("</section>", start)]


def test_timeline_call_is_frozen(guarded_events):
    """ToolCall values cannot be changed."""
    call: ToolCall = timeline(guarded_events).calls[0]
    with pytest.raises(AttributeError):
        call.decision = "denied"  # type: ignore[misc]
    assert isinstance(timeline(guarded_events), Timeline)


def test_import_stays_light():
    """cra_agents does not import the report; the report imports no IPython or jinja2."""
    code = (
        "import sys, cra_agents\n"
        "assert 'cra_agents.report' not in sys.modules\n"
        "import cra_agents.report\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('IPython', 'jinja2', 'httpx')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- long sessions --------------------------------------------------------------------------


def long_session(calls: int) -> list[cra.TraceEvent]:
    with cra.Runtime([GITHUB_OPS], store="memory://", approval_handler=approve) as runtime:
        session = runtime.create_session("bulk-bot", "list a lot")
        sid = session.session_id
        for index in range(calls):
            action = "github.issue.list" if index % 2 else "github.pr.list"
            runtime.record_outcome(runtime.authorize(sid, action, {"repo": "acme/app"}), result=[])
        with pytest.raises(cra.ActionDeniedError):
            runtime.authorize(sid, "github.repo.delete", {"repo": "a/b", "confirm_name": "a/b"})
        runtime.end_session(sid)
        return runtime.trace_events(sid)


def test_many_calls_share_one_lane_per_action():
    from cra_agents import report

    events = long_session(report.LANES_FROM + 10)
    svg = timeline(events).svg()
    assert svg.count('class="row-bg"') == 3  # issue.list, pr.list, repo.delete
    assert svg.count('class="call ') == report.LANES_FROM + 11  # every call still a bar
    few = timeline(long_session(3)).svg()
    assert few.count('class="row-bg"') == 4


def test_long_reports_keep_every_notable_call_and_cap_the_rest(monkeypatch):
    from cra_agents import report

    monkeypatch.setattr(report, "MAX_TABLE_ROWS", 5)
    monkeypatch.setattr(report, "MAX_RAW_EVENTS", 10)
    events = long_session(20)
    page = render_report(events)
    table = _section(page, "decisions")
    assert table.count('<tr class="row-') == 5
    assert "github.repo.delete" in table  # the denial is never dropped
    assert "16 allowed calls are not listed" in table
    raw = _section(page, "events")
    assert f"{len(events) - 10:,} events omitted" in raw
    assert raw.count('<tr><td class="num">') == 10


def test_lane_mode_says_so():
    from cra_agents import report

    page = render_report(long_session(report.LANES_FROM + 1))
    assert f"One row per action ({report.LANES_FROM + 2:,} calls)" in _section(page, "timeline")
    assert "One row per tool call" in _section(render_report(long_session(2)), "timeline")
