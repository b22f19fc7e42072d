"""Conformance cases and the harness that runs them."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from cra_agents._clock import now_timestamp
from cra_agents._exceptions import CRAError
from cra_agents._requests import resolve_request
from cra_agents._version import __version__
from cra_agents.atlas import json_pointer, load_atlas, validate_atlas
from cra_agents.policy import ConditionContext, Effect, PolicyEngine, RateLimiter
from cra_agents.protocol import GENESIS_HASH, CARPRequest
from cra_agents.protocol import events as ev
from cra_agents.runtime import Runtime
from cra_agents.trace import compute_event_hash, spec_event_hash, verify_chain

__all__ = ["default_suite_dir", "main", "run_conformance"]

DYNAMIC = "$dynamic"
_UUID = "01234567-89ab-cdef-0123-456789abcdef"
_TS = "2024-12-28T12:00:00.000Z"


class CaseFailedError(AssertionError):
    """A conformance expectation did not hold."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CaseFailedError(message)


#: Where the suite comes from: the upstream CRA specification's ``specs/`` folder.
UPSTREAM_REPOSITORY = "https://github.com/Domusgpt/CRA-Core"
#: How to get a suite, one line (the CLI's hint).
WHERE_TO_GET = (
    f"cra-agents does not ship the suite: git clone --depth 1 {UPSTREAM_REPOSITORY} and run "
    "cra conformance --suite CRA-Core/specs (or set CRA_CONFORMANCE_DIR)"
)


class Suite(NamedTuple):
    """Where a conformance suite keeps its schemas and its golden case directories."""

    root: Path
    schemas: Path
    golden: Path


class SuiteNotFoundError(FileNotFoundError):
    """No conformance suite at the given (or default) place.

    Attributes:
        hint: Where to get one (:data:`WHERE_TO_GET`); also the message's last line.
    """

    hint = WHERE_TO_GET


def default_suite_dir() -> Path:
    """``$CRA_CONFORMANCE_DIR``, else ``../shared/conformance`` from the working directory."""
    env = os.environ.get("CRA_CONFORMANCE_DIR")
    return Path(env) if env else Path("..") / "shared" / "conformance"


def find_suite(suite_dir: str | os.PathLike[str] | None = None) -> Suite:
    """Locate a suite: a folder with ``schemas/`` and ``golden/``, or upstream's layout.

    Accepted: a folder holding ``schemas/`` and ``golden/``; upstream's ``specs/`` folder
    (``schemas/`` and ``conformance/golden/``); or a clone of the upstream repository (its
    ``specs/``).

    Raises:
        SuiteNotFoundError: nothing of the kind there; the message says where to get a suite.
    """
    root = Path(suite_dir) if suite_dir is not None else default_suite_dir()
    for base in (root, root / "specs"):
        for golden in (base / "golden", base / "conformance" / "golden"):
            if (base / "schemas").is_dir() and golden.is_dir():
                return Suite(base, base / "schemas", golden)
    origin = "" if suite_dir is not None or "CRA_CONFORMANCE_DIR" in os.environ else " (default)"
    raise SuiteNotFoundError(
        f"no conformance suite at {root}{origin}: expected schemas/ and golden/ there, or "
        f"upstream's specs/ folder.\n{WHERE_TO_GET}"
    )


# -- schema cases (CONFORMANCE.md §1 and §6) --------------------------------------------------


def _request(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "carp_version": "1.0",
        "request_id": _UUID,
        "timestamp": _TS,
        "operation": "resolve",
        "requester": {"agent_id": "test-agent", "session_id": _UUID},
        "task": {"goal": "Test goal"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


_REQUEST_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "schema.carp.request.valid": (_request(), None),
    "schema.carp.request.invalid_version": (_request(carp_version="2.0"), "/carp_version"),
    "schema.carp.request.missing_required": (_request(task=None), "/task"),
    "schema.carp.request.execute_requires_execution": (
        _request(operation="execute", task={"goal": "Execute action"}),
        "/execution",
    ),
}


def _request_case(document: dict[str, Any], error_path: str | None) -> Callable[[Suite], Any]:
    def case(suite: Suite) -> dict[str, Any]:
        try:
            CARPRequest.model_validate(document)
        except ValidationError as exc:
            paths = [json_pointer(e["loc"]) for e in exc.errors()]
            if error_path is None:
                raise CaseFailedError(f"expected VALID, got INVALID at {paths}") from exc
            # An "after" validator reports at the root; the missing field is named in the text.
            named = any(p == error_path for p in paths) or any(
                error_path.strip("/") in e["msg"] for e in exc.errors()
            )
            _expect(named, f"expected an error at {error_path}, got {paths}")
            return {"verdict": "INVALID", "paths": paths}
        _expect(error_path is None, f"expected INVALID at {error_path}, got VALID")
        return {"verdict": "VALID"}

    return case


def _manifest(**changes: Any) -> dict[str, Any]:
    base = {
        "atlas_version": "1.0",
        "atlas_id": "com.example.test",
        "version": "1.0.0",
        "name": "Test Atlas",
        "description": "A test atlas",
    }
    base.update(changes)
    return base


_ATLAS_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "atlas.manifest.valid": (
        _manifest(
            actions=[
                {"action_id": "test.action", "name": "Test Action", "description": "Does testing"}
            ]
        ),
        None,
    ),
    "atlas.manifest.invalid_id": (_manifest(atlas_id="InvalidID"), "/atlas_id"),
    "atlas.manifest.invalid_version": (_manifest(version="1.0"), "/version"),
}


def _atlas_case(document: dict[str, Any], error_path: str | None) -> Callable[[Suite], Any]:
    def case(suite: Suite) -> dict[str, Any]:
        report = validate_atlas(document, strict=True)
        paths = [f.path for f in report.errors]
        if error_path is None:
            _expect(report.valid, f"expected VALID, got errors at {paths}")
        else:
            _expect(not report.valid, "expected INVALID, got VALID")
            _expect(error_path in paths, f"expected an error at {error_path}, got {paths}")
        return {"verdict": "VALID" if report.valid else "INVALID", "paths": paths}

    return case


# -- hash cases (CONFORMANCE.md §2) -------------------------------------------------------------

_SINGLE_EVENT = {
    "trace_version": "1.0",
    "event_id": _UUID,
    "trace_id": "11111111-1111-1111-1111-111111111111",
    "span_id": "22222222-2222-2222-2222-222222222222",
    "parent_span_id": None,
    "session_id": "33333333-3333-3333-3333-333333333333",
    "sequence": 0,
    "timestamp": "2024-12-28T12:00:00.000000Z",
    "event_type": ev.SESSION_STARTED,
    "payload": {"agent_id": "test-agent", "goal": "Test session"},
    "previous_event_hash": GENESIS_HASH,
}
RUST_RULE_HASH = "3d71a7b30f84fadf986955467af6cabdbd180a61de5b14f4582cd3cdfbe57d2e"
SPEC_RULE_HASH = "f5b4945b0bb5f9adc249a7062a5bf1bbcf6f095edbd8fb1503bbc2d5a05d19c5"


def _hash_single(suite: Suite) -> dict[str, Any]:
    rust, spec = compute_event_hash(_SINGLE_EVENT), spec_event_hash(_SINGLE_EVENT)
    _expect(rust == RUST_RULE_HASH, f"Rust-rule hash {rust} != {RUST_RULE_HASH}")
    _expect(spec == SPEC_RULE_HASH, f"spec-rule hash {spec} != {SPEC_RULE_HASH}")
    normalised = dict(_SINGLE_EVENT, timestamp="2024-12-28T12:00:00+00:00")
    _expect(
        spec_event_hash(normalised) == RUST_RULE_HASH,
        "with a +00:00 timestamp both rules must agree",
    )
    return {"rust_rule": rust, "spec_rule": spec}


def _linkage(
    events: list[tuple[int, str, str]], expected: tuple[str, int] | None
) -> Callable[[Suite], Any]:
    def case(suite: Suite) -> dict[str, Any]:
        chain = [
            {
                "event_id": f"event-{i + 1}",
                "sequence": seq,
                "event_hash": h,
                # The upstream case abbreviates genesis as "0000...0000".
                "previous_event_hash": GENESIS_HASH if prev == "0000...0000" else prev,
            }
            for i, (seq, h, prev) in enumerate(events)
        ]
        result = verify_chain(chain, check_hashes=False)
        if expected is None:
            _expect(result.valid, f"expected VALID, got {result.error_type}")
        else:
            _expect(not result.valid, "expected INVALID, got VALID")
            _expect(
                (result.error_type, result.first_invalid_index) == expected,
                f"expected {expected}, got {(result.error_type, result.first_invalid_index)}",
            )
        return result.as_dict()

    return case


# -- policy and resolution cases (CONFORMANCE.md §3 and §4) ------------------------------------


def _atlas(actions: list[str], **changes: Any) -> dict[str, Any]:
    return _manifest(
        actions=[{"action_id": a, "name": a, "description": a} for a in actions], **changes
    )


def _deny_precedence(suite: Suite) -> dict[str, Any]:
    engine = PolicyEngine(
        [
            load_atlas(
                _atlas(
                    ["resource.delete", "resource.get"],
                    policies=[
                        {
                            "policy_id": "allow-all",
                            "type": "allow",
                            "actions": ["*"],
                            "priority": 0,
                        },
                        {
                            "policy_id": "deny-delete",
                            "type": "deny",
                            "actions": ["*.delete"],
                            "priority": 100,
                        },
                    ],
                )
            )
        ]
    )
    decision = engine.decide("resource.delete", ConditionContext(agent_id="test-agent"))
    _expect(
        decision.effect is Effect.DENY and decision.policy_id == "deny-delete",
        f"got {decision.effect.value} by {decision.policy_id}",
    )
    return {"decision": decision.result, "policy_id": decision.policy_id}


def _rate_limit(suite: Suite) -> dict[str, Any]:
    engine = PolicyEngine(
        [
            load_atlas(
                _atlas(
                    ["api.call"],
                    policies=[
                        {
                            "policy_id": "rate-limit-api",
                            "type": "rate_limit",
                            "actions": ["api.*"],
                            "parameters": {"max_calls": 2, "window_seconds": 60},
                        }
                    ],
                )
            )
        ],
        limiter=RateLimiter(clock=lambda: 0.0),
    )
    ctx = ConditionContext(agent_id="test-agent")
    results = [engine.decide("api.call", ctx, consume=True) for _ in range(3)]
    got = [(r.result, r.reason) for r in results]
    _expect(
        got == [("allow", None), ("allow", None), ("deny", "rate_limit_exceeded")], f"got {got}"
    )
    return {"sequence": got}


def _risk_escalation(suite: Suite) -> dict[str, Any]:
    engine = PolicyEngine(
        [
            load_atlas(
                _atlas(
                    ["database.drop"],
                    policies=[
                        {
                            "policy_id": "high-risk-approval",
                            "type": "require_approval",
                            "conditions": {"risk_tiers": ["high", "critical"]},
                        }
                    ],
                )
            )
        ]
    )
    high = engine.decide("database.drop", ConditionContext(agent_id="a", risk_tier="high"))
    low = engine.decide("database.drop", ConditionContext(agent_id="a", risk_tier="low"))
    _expect(high.effect is Effect.REQUIRE_APPROVAL, f"high risk gave {high.result}")
    _expect(low.effect is Effect.ALLOW, f"low risk gave {low.result}")
    return {"high": high.result, "low": low.result}


def _session(runtime: Runtime, goal: str, **kwargs: Any) -> Any:
    session = runtime.create_session("test-agent", goal)
    return session, runtime.resolve(resolve_request(session, goal, **kwargs))


def _context_ordering(suite: Suite) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        packs = []
        for pack_id, priority in (
            ("low-priority", 10),
            ("high-priority", 100),
            ("medium-priority", 50),
        ):
            name = pack_id.split("-")[0]
            (root / f"{name}.md").write_text(f"# {name}\n", encoding="utf-8")
            packs.append(
                {"pack_id": pack_id, "name": pack_id, "priority": priority, "files": [f"{name}.md"]}
            )
        (root / "atlas.json").write_text(json.dumps(_manifest(context_packs=packs)), "utf-8")
        _, resolution = _session(Runtime([root], store="memory://"), "Need context")
    order = [(b.metadata or {}).get("source_pack") for b in resolution.context_blocks]
    _expect(order == ["high-priority", "medium-priority", "low-priority"], f"got {order}")
    return {"order": order}


def _capability_filter(suite: Suite) -> dict[str, Any]:
    atlas = _atlas(
        ["resource.get", "resource.list", "resource.create", "resource.update"],
        capabilities=[
            {"capability_id": "read", "name": "Read", "actions": ["resource.get", "resource.list"]},
            {
                "capability_id": "write",
                "name": "Write",
                "actions": ["resource.create", "resource.update"],
            },
        ],
    )
    _, resolution = _session(
        Runtime([atlas], store="memory://"), "Read resources", required_capabilities=["read"]
    )
    allowed = [a.action_id for a in resolution.allowed_actions]
    _expect(allowed == ["resource.get", "resource.list"], f"got {allowed}")
    return {"allowed": allowed}


def _diff_semantic(suite: Suite) -> dict[str, Any]:
    from cra_agents.replay import diff_traces

    def trace(duration: int) -> list[dict[str, Any]]:
        return [
            {
                "event_type": ev.ACTION_EXECUTED,
                "payload": {"action_id": "resource.create", "duration_ms": duration},
            }
        ]

    diff = diff_traces(trace(100), trace(150))
    found = [(d.path, d.type, d.significance) for d in diff.differences]
    _expect(diff.compatibility == "semantically_equivalent", f"got {diff.compatibility}")
    _expect(found == [("/0/payload/duration_ms", "value_changed", "minor")], f"got {found}")
    return diff.as_dict()


# -- golden directories -------------------------------------------------------------------------


def _matches(expected: Any, actual: Any, path: str = "") -> Iterator[str]:
    if expected == DYNAMIC:
        return
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            yield f"{path or '/'}: expected an object, got {actual!r}"
            return
        keys = set(expected) - {"$comment"}
        for key in sorted(keys | set(actual)):
            if key not in actual:
                yield f"{path}/{key}: missing"
            elif key not in keys:
                yield f"{path}/{key}: unexpected"
            else:
                yield from _matches(expected[key], actual[key], f"{path}/{key}")
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            yield f"{path or '/'}: expected {len(expected)} items, got {actual!r}"
            return
        for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
            yield from _matches(e, a, f"{path}/{index}")
    elif expected != actual:
        yield f"{path or '/'}: expected {expected!r}, got {actual!r}"


def _schema_validator(suite: Suite, name: str) -> Any:
    import jsonschema

    schema = json.loads((suite.schemas / f"{name}.schema.json").read_text("utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _golden(directory: Path) -> Callable[[Suite], Any]:
    def case(suite: Suite) -> dict[str, Any]:
        request = json.loads((directory / "request.json").read_text("utf-8"))
        expected_resolution = json.loads(
            (directory / "expected-resolution.json").read_text("utf-8")
        )
        expected_trace = [
            json.loads(line)
            for line in (directory / "expected-trace.jsonl").read_text("utf-8").splitlines()
            if line.strip()
        ]
        runtime = Runtime([directory], store="memory://")
        # The golden trace was recorded with the inputs of the Rust conformance test, not
        # request.json's agent and goal (PROTOCOL_NOTES §7.27); atlas_ids come from request.json.
        session = runtime.create_session("test-agent", "I need to read and manage data")
        resolution = runtime.resolve(
            resolve_request(
                session,
                atlas_ids=request.get("atlas_ids"),
                risk_tier=request["task"].get("risk_tier", "low"),
            )
        )
        wire = resolution.model_dump(mode="json")
        events = [e.model_dump(mode="json") for e in runtime.trace_events(session.session_id)]
        problems = list(_matches(expected_resolution, wire, "/resolution"))
        if len(events) != len(expected_trace):
            problems.append(f"/trace: expected {len(expected_trace)} events, got {len(events)}")
        for index, (e, a) in enumerate(zip(expected_trace, events, strict=False)):
            problems.extend(_matches(e, a, f"/trace/{index}"))
        for error in _schema_validator(suite, "carp-resolution").iter_errors(wire):
            problems.append(f"resolution schema: {error.message}")
        event_schema = _schema_validator(suite, "trace-event")
        for index, event in enumerate(events):
            for error in event_schema.iter_errors(event):
                problems.append(f"event {index} schema: {error.message}")
        verification = verify_chain(events)
        _expect(verification.valid, f"chain invalid: {verification.error_message}")
        _expect(not problems, "; ".join(problems[:10]))
        return {
            "events": len(events),
            "decision": wire["decision"]["type"],
            "hash_rule": verification.hash_rule,
        }

    return case


# -- ports of cra-core tests/conformance.rs ----------------------------------------------------


def _rust_simple_resolve(suite: Suite) -> dict[str, Any]:
    runtime = Runtime([suite.golden / "simple-resolve"], store="memory://")
    session, resolution = _session(runtime, "I need to read and manage data")
    allowed = {a.action_id for a in resolution.allowed_actions}
    _expect(resolution.decision.type == "partial", f"decision {resolution.decision.type}")
    _expect(
        allowed == {"resource.get", "resource.list", "resource.create", "resource.update"},
        f"allowed {sorted(allowed)}",
    )
    denied = [(d.action_id, d.policy_id) for d in resolution.denied_actions]
    _expect(denied == [("resource.delete", "deny-delete")], f"denied {denied}")
    events = runtime.trace_events(session.session_id)
    types = [e.event_type for e in events]
    _expect(
        types[0] == ev.SESSION_STARTED
        and types[-1] == ev.RESOLUTION_COMPLETED
        and types.count(ev.POLICY_EVALUATED) == 5,
        f"events {types}",
    )
    completed = events[-1].payload
    _expect(
        (completed["decision_type"], completed["allowed_count"], completed["denied_count"])
        == ("partial", 4, 1),
        f"completed payload {completed}",
    )
    _expect(verify_chain(events).valid, "chain does not verify")
    return {"events": len(events)}


def _rust_deny_precedence(suite: Suite) -> dict[str, Any]:
    atlas = _atlas(
        ["data.get", "data.delete"],
        policies=[
            {"policy_id": "allow-all", "type": "allow", "actions": ["*"]},
            {
                "policy_id": "deny-deletes",
                "type": "deny",
                "actions": ["*.delete"],
                "reason": "Deletes are not allowed",
            },
        ],
    )
    _, resolution = _session(Runtime([atlas], store="memory://"), "Manage data")
    denied = resolution.denied("data.delete")
    _expect(
        denied is not None and denied.reason == "Deletes are not allowed", f"data.delete: {denied}"
    )
    _expect(resolution.allowed("data.get") is not None, "data.get not allowed")
    return {"decision": resolution.decision.type}


def _rust_genesis(suite: Suite) -> dict[str, Any]:
    runtime = Runtime([_atlas(["data.get"])], store="memory://")
    session = runtime.create_session("test-agent", "Check genesis")
    first = runtime.trace_events(session.session_id)[0]
    _expect(
        GENESIS_HASH == "0" * 64 and first.previous_event_hash == GENESIS_HASH,
        f"genesis {first.previous_event_hash}",
    )
    _expect(first.sequence == 0 and first.parent_span_id is None, "first event shape")
    return {"genesis": GENESIS_HASH}


def _rust_sequence(suite: Suite) -> dict[str, Any]:
    runtime = Runtime([_atlas(["data.get"])], store="memory://")
    session = runtime.create_session("test-agent", "Sequence")
    for _ in range(3):
        runtime.resolve(resolve_request(session))
    sequences = [e.sequence for e in runtime.trace_events(session.session_id)]
    _expect(sequences == list(range(len(sequences))), f"sequences {sequences}")
    return {"events": len(sequences)}


_CONTENT = "# Rules\n\nUse `<>&\"'` and ${vars} [refs] as is.\n"


def _context_atlas() -> dict[str, Any]:
    return _manifest(
        context_blocks=[
            {
                "context_id": "hash-rules",
                "name": "Hash Rules",
                "priority": 75,
                "content": _CONTENT,
                "content_type": "text/markdown",
                "keywords": ["hash", "chain"],
            },
            {
                "context_id": "chain-rules",
                "name": "Chain Rules",
                "priority": 50,
                "content": "Chains are append-only.",
                "keywords": ["chain"],
            },
        ]
    )


def _rust_context(suite: Suite) -> dict[str, Any]:
    runtime = Runtime([_context_atlas()], store="memory://")
    session, hit = _session(runtime, "Fix the hash computation")
    _, miss = _session(runtime, "Working on something else")
    ids = [b.block_id for b in hit.context_blocks]
    _expect(ids == ["hash-rules"], f"keyword match gave {ids}")
    _expect(not miss.context_blocks, "unrelated goal injected context")
    block = hit.context_blocks[0]
    _expect(
        bool(
            block.block_id and block.name == "Hash Rules" and block.content and block.content_type
        ),
        "block fields missing",
    )
    _expect(block.priority == 75, f"priority {block.priority}")
    _expect(block.content == _CONTENT, "content not byte-exact")
    injected = [
        e for e in runtime.trace_events(session.session_id) if e.event_type == ev.CONTEXT_INJECTED
    ]
    _expect(
        len(injected) == 1
        and {"context_id", "priority", "source_atlas"} <= set(injected[0].payload),
        f"context.injected events {injected}",
    )
    return {"blocks": ids}


def _rust_context_chain(suite: Suite) -> dict[str, Any]:
    runtime = Runtime([_context_atlas()], store="memory://")
    session = runtime.create_session("test-agent", "hash chain work")
    for _ in range(3):
        resolution = runtime.resolve(resolve_request(session))
        _expect(len(resolution.context_blocks) == 2, "expected 2 blocks")
    result = runtime.verify(session.session_id)
    _expect(result.valid, f"chain invalid: {result.error_message}")
    return {"events": result.event_count}


def _cases(suite: Suite) -> list[tuple[str, Callable[[Suite], Any] | None, str | None]]:
    cases: list[tuple[str, Callable[[Suite], Any] | None, str | None]] = []
    cases += [(n, _request_case(d, p), None) for n, (d, p) in _REQUEST_CASES.items()]
    cases.append(("hash.compute.single_event", _hash_single, None))
    cases.append(
        (
            "hash.chain.valid",
            _linkage(
                [(0, "hash1", "0000...0000"), (1, "hash2", "hash1"), (2, "hash3", "hash2")], None
            ),
            None,
        )
    )
    cases.append(
        (
            "hash.chain.broken",
            _linkage(
                [(0, "hash1", "0000...0000"), (1, "hash2", "wrong_hash")], ("chain_broken", 1)
            ),
            None,
        )
    )
    cases.append(
        (
            "hash.chain.sequence_gap",
            _linkage([(0, "hash1", "0000...0000"), (2, "hash2", "hash1")], ("sequence_gap", 1)),
            None,
        )
    )
    cases += [
        ("policy.order.deny_precedence", _deny_precedence, None),
        ("policy.rate_limit.enforced", _rate_limit, None),
        ("policy.risk_tier.escalation", _risk_escalation, None),
        ("resolution.context.ordering", _context_ordering, None),
        ("resolution.actions.capability_filter", _capability_filter, None),
        (
            "replay.deterministic",
            None,
            "upstream reference-atlas.json/reference-trace.jsonl do not exist",
        ),
        ("replay.diff.semantic", _diff_semantic, None),
    ]
    cases += [(n, _atlas_case(d, p), None) for n, (d, p) in _ATLAS_CASES.items()]
    golden = suite.golden
    for directory in sorted(golden.iterdir()) if golden.is_dir() else []:
        if (directory / "expected-trace.jsonl").is_file():
            cases.append((f"golden.{directory.name}", _golden(directory), None))
    cases += [
        ("rust.conformance_simple_resolve", _rust_simple_resolve, None),
        ("rust.conformance_policy_deny_takes_precedence", _rust_deny_precedence, None),
        ("rust.conformance_genesis_event_hash", _rust_genesis, None),
        ("rust.conformance_sequence_monotonic", _rust_sequence, None),
        ("rust.conformance_context_injection", _rust_context, None),
        ("rust.conformance_context_chain_integrity", _rust_context_chain, None),
    ]
    return cases


def run_conformance(suite_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run every case against ``suite_dir``; return the upstream harness result object.

    Raises:
        SuiteNotFoundError: no suite there (a ``FileNotFoundError``); the message says where
            to get one.
    """
    suite = find_suite(suite_dir)
    started = time.perf_counter()
    results = []
    for test_id, case, skip in _cases(suite):
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"test_id": test_id}
        if case is None:
            entry.update(status="skipped", details={"reason": skip})
        else:
            try:
                details = case(suite)
            except CaseFailedError as exc:
                entry.update(status="failed", error=str(exc))
            except (CRAError, ValueError, OSError, KeyError) as exc:
                entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            else:
                entry.update(status="passed", details=details)
        entry["duration_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        results.append(entry)
    counts = {s: sum(r["status"] == s for r in results) for s in ("passed", "failed", "skipped")}
    return {
        "implementation": "cra-agents",
        "version": __version__,
        "conformance_level": "CRA-Minimal",
        "test_run": {
            "timestamp": now_timestamp(),
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "total": len(results),
            **counts,
        },
        "results": results,
    }


def _print_human(report: Mapping[str, Any]) -> None:
    out = sys.stdout
    for result in report["results"]:
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[result["status"]]
        extra = result.get("error") or (result.get("details") or {}).get("reason", "")
        out.write(
            f"{mark}  {result['test_id']}{'  ' + str(extra) if extra and mark != 'PASS' else ''}\n"
        )
    run = report["test_run"]
    out.write(
        f"\n{report['conformance_level']}: {run['passed']} passed, {run['failed']} failed, "
        f"{run['skipped']} skipped in {run['duration_ms']:.0f} ms\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m cra_agents.conformance",
        description="Run the upstream CRA conformance suite.",
    )
    parser.add_argument(
        "suite",
        nargs="?",
        help="conformance folder (default: $CRA_CONFORMANCE_DIR, else ../shared/conformance)",
    )
    parser.add_argument("--json", action="store_true", help="print the harness JSON")
    args = parser.parse_args(argv)
    try:
        report = run_conformance(args.suite)
    except FileNotFoundError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        _print_human(report)
    return 1 if report["test_run"]["failed"] else 0
