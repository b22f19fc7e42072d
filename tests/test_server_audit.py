"""Stored sessions over HTTP for ``audit`` callers: list, get, traces, verify (any store).

Sessions are written into the store by a runtime of their own (as an ingest server receives
them from other processes: no owner here), then a real server on 127.0.0.1 serves that store.
An ``audit`` key sees them; ``read``/``write`` keys keep seeing only their own (404 otherwise,
exactly as for a session that does not exist).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import cra_agents.server._routes as routes
from cra_agents import ActionDeniedError, Client, Runtime
from cra_agents._requests import execute_request, resolve_request
from cra_agents.examples import atlas_path
from cra_agents.protocol import events as ev
from cra_agents.server import ServerConfig
from cra_agents.server._config import ApiKey
from cra_agents.server._principal import OWNER_KEY
from tests.harness.live_server import LiveServer, live_server
from tests.harness.postgres import Server

STORES = ["memory", "sqlite", "jsonl", "postgresql"]

GITHUB_OPS = atlas_path("github-ops")
ISSUE = {"repo": "acme/app", "issue_number": 1, "body": "Thanks, looking into it."}

#: key → (name, scopes)
AUDITOR = "auditor-key-0123456789"
ALICE = "alice-key-0123456789ab"
BOB = "bob-key-0123456789abcd"
OPS = "ops-key-0123456789abcd"
SHIPPER = "shipper-key-0123456789"
KEYS: dict[str, tuple[str, frozenset[str]]] = {
    AUDITOR: ("auditor", frozenset({"audit"})),
    ALICE: ("alice", frozenset({"read", "write"})),
    BOB: ("bob", frozenset({"read", "write"})),
    OPS: ("ops", frozenset({"read", "write", "audit"})),
    SHIPPER: ("shipper", frozenset({"ingest"})),
}
UNKNOWN = "0190e3a0-0000-7000-8000-000000000000"


def config() -> ServerConfig:
    """Keys of every kind, no rate limit."""
    return ServerConfig(
        api_keys=tuple(ApiKey.plain(name, key, scopes) for key, (name, scopes) in KEYS.items()),
        rate_limit_per_second=0,
    )


@dataclass
class Recorded:
    """Sessions a runtime wrote into a store (not through the server)."""

    store: str
    ended: str
    active: str


def record_into(runtime: Runtime, store: str) -> Recorded:
    """An ended session (resolve, two allowed calls, a denied one) and one still going."""
    ended = runtime.create_session("triage-bot", "Triage new bug reports", metadata={"team": "ops"})
    resolution = runtime.resolve(resolve_request(ended))
    calls: list[tuple[str, dict[str, Any]]] = [
        ("github.issue.list", {"repo": "acme/app"}),
        ("github.issue.comment", ISSUE),
    ]
    for action, parameters in calls:
        runtime.execute(execute_request(ended, resolution.resolution_id, action, parameters))
    with pytest.raises(ActionDeniedError):
        runtime.execute(
            execute_request(
                ended, resolution.resolution_id, "github.repo.delete", {"repo": "acme/app"}
            )
        )
    runtime.end_session(ended.session_id)
    active = runtime.create_session("release-bot", "Publish the release")
    runtime.resolve(resolve_request(active))
    return Recorded(store, ended.session_id, active.session_id)


def record_sessions(store: str) -> Recorded:
    """:func:`record_into` a store by a runtime of its own (closed: all of it is stored)."""
    with Runtime([GITHUB_OPS], store=store, writer="thread") as runtime:
        return record_into(runtime, store)


def store_url(kind: str, request: pytest.FixtureRequest) -> str:
    """A new, empty store of ``kind`` (``postgresql``: a database of its own, see conftest)."""
    if kind == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return f"sqlite://{tmp_path / 'traces.db'}" if kind == "sqlite" else f"jsonl://{tmp_path}"


@contextlib.contextmanager
def stored_and_served(
    kind: str, request: pytest.FixtureRequest
) -> Iterator[tuple[Recorded, LiveServer]]:
    """Sessions in a store of ``kind``, and a server over it; ``memory``: the server's own
    runtime records them itself (not through the server: nobody owns them)."""
    if kind == "memory":
        with Runtime([GITHUB_OPS], store="memory://", writer="thread") as runtime:
            recorded = record_into(runtime, "memory://")
            with live_server(runtime, config()) as live:
                yield recorded, live
        return
    url = store_url(kind, request)
    recorded = record_sessions(url)
    with serving(url) as live:
        yield recorded, live


@contextlib.contextmanager
def serving(store: str) -> Iterator[LiveServer]:
    """A real server (127.0.0.1, a free port) over a runtime of its own on ``store``."""
    with (
        Runtime([GITHUB_OPS], store=store, writer="thread") as runtime,
        live_server(runtime, config()) as live,
    ):
        yield live


def http(live: LiveServer, key: str | None) -> httpx.Client:
    """A client of ``live`` sending ``key`` (none: no credential)."""
    headers = {} if key is None else {"X-API-Key": key}
    return httpx.Client(base_url=live.url, headers=headers, timeout=30)


def tamper(path: Path, session_id: str, old: bytes, new: bytes) -> int:
    """Rewrite the first stored event holding ``old`` behind the store's back; its sequence."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (key,) = db.execute(
            "SELECT session_key FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
        rows = db.execute(
            "SELECT id, event FROM events WHERE id BETWEEN ? AND ? ORDER BY id",
            (key << 32, (key << 32) + (1 << 32) - 1),
        ).fetchall()
        row_id, event = next((i, bytes(e)) for i, e in rows if old in bytes(e))
        db.execute("UPDATE events SET event = ? WHERE id = ?", (event.replace(old, new), row_id))
        db.commit()
    return int(row_id - (key << 32))


def recorded_in(request: pytest.FixtureRequest) -> Iterator[Recorded]:
    """Sessions a runtime wrote into a SQLite file, or a PostgreSQL database of their own
    (``request.param``), for a module's tests (see conftest: no PostgreSQL skips, but fails
    on CI)."""
    if request.param == "postgresql":
        pg: Server = request.getfixturevalue("pg_server")
        url = pg.create_database()
        try:
            yield record_sessions(url)
        finally:
            pg.drop_database(url)
        return
    factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    yield record_sessions(f"sqlite://{factory.mktemp('audit') / 'traces.db'}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def recorded(request: pytest.FixtureRequest) -> Iterator[Recorded]:
    yield from recorded_in(request)


@pytest.fixture(scope="module")
def server(recorded: Recorded) -> Iterator[LiveServer]:
    with serving(recorded.store) as live:
        yield live


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


class TestStoredSessionList:
    def test_audit_lists_every_stored_session(self, server: LiveServer, recorded: Recorded) -> None:
        """Both stored sessions, with their facts from their first and last events."""
        with http(server, AUDITOR) as client:
            answer = client.get("/v1/stored-sessions").json()
        assert answer["total"] == 2
        assert (answer["limit"], answer["offset"]) == (20, 0)
        ended, active = answer["items"]
        assert ended["session_id"] == recorded.ended
        assert ended["status"] == "ended"
        assert ended["agent_id"] == "triage-bot"
        assert ended["goal"] == "Triage new bug reports"
        assert ended["metadata"] == {"team": "ops"}
        assert ended["end_reason"] == "completed"
        assert ended["resolution_count"] == 1
        assert ended["action_count"] >= 2
        assert ended["ended_at"] > ended["created_at"]
        assert active["session_id"] == recorded.active
        assert active["status"] == "active"
        assert "ended_at" not in active and "resolution_count" not in active
        assert active["event_count"] > 1
        assert "unreadable" not in answer

    def test_pages_and_order(self, server: LiveServer, recorded: Recorded) -> None:
        """limit/offset page the store's sessions; newest first on request; any offset works."""
        with http(server, AUDITOR) as client:
            second = client.get("/v1/stored-sessions", params={"limit": 1, "offset": 1}).json()
            newest = client.get("/v1/stored-sessions", params={"order": "newest"}).json()
            past = client.get("/v1/stored-sessions", params={"offset": 50}).json()
            bad = client.get("/v1/stored-sessions", params={"limit": 0})
        assert [s["session_id"] for s in second["items"]] == [recorded.active]
        assert second["total"] == 2
        assert [s["session_id"] for s in newest["items"]] == [recorded.active, recorded.ended]
        assert past["items"] == [] and past["offset"] == 2
        _error(bad, 400, "SCHEMA_VALIDATION_ERROR")

    def test_needs_the_audit_scope(self, server: LiveServer) -> None:
        """read/write and ingest keys are refused (403); no credential is 401."""
        for key in (ALICE, SHIPPER):
            with http(server, key) as client:
                error = _error(client.get("/v1/stored-sessions"), 403, "FORBIDDEN")
            assert error["details"]["required"] == "audit"
        with http(server, None) as client:
            _error(client.get("/v1/stored-sessions"), 401, "UNAUTHORIZED")

    def test_client_lists_stored_sessions(self, server: LiveServer, recorded: Recorded) -> None:
        """Client.stored_sessions: SessionInfo objects, pages as asked."""
        with Client(server.url, api_key=AUDITOR) as client:
            sessions = client.stored_sessions()
            newest = client.stored_sessions(limit=1, order="newest")
        assert [s.session_id for s in sessions] == [recorded.ended, recorded.active]
        assert [s.active for s in sessions] == [False, True]
        assert sessions[0].resolution_count == 1
        assert sessions[1].event_count > 1
        assert [s.session_id for s in newest] == [recorded.active]


class TestStoredSession:
    def test_audit_gets_a_stored_session(self, server: LiveServer, recorded: Recorded) -> None:
        """GET /v1/sessions/{id} falls back to the store: ended as its session.ended says."""
        with http(server, AUDITOR) as client:
            ended = client.get(f"/v1/sessions/{recorded.ended}").json()
            active = client.get(f"/v1/sessions/{recorded.active}").json()
            listed = client.get("/v1/stored-sessions").json()["items"]
        assert ended == listed[0]
        assert active == listed[1]
        assert (ended["status"], active["status"]) == ("ended", "active")

    def test_others_see_nothing(self, server: LiveServer, recorded: Recorded) -> None:
        """A read/write key gets the 404 of a session that does not exist, on every route."""
        with http(server, ALICE) as client:
            for session_id in (recorded.ended, UNKNOWN):
                answers = [
                    client.get(f"/v1/sessions/{session_id}"),
                    client.get(f"/v1/traces/{session_id}"),
                    client.post(f"/v1/traces/{session_id}/verify"),
                ]
                for response in answers:
                    error = _error(response, 404, "SESSION_NOT_FOUND")
                    assert error["message"] == f"no session {session_id}"
                    assert error["details"] == {"session_id": session_id}
            own = client.get("/v1/sessions", params={"status": "all"}).json()
        assert own["items"] == [] and own["total"] == 0

    def test_unknown_sessions_are_404_for_audit(self, server: LiveServer) -> None:
        """An id the store does not hold, or that is no session id, is 404 for audit too."""
        with http(server, AUDITOR) as client:
            for session_id in (UNKNOWN, "not-a-session"):
                for response in (
                    client.get(f"/v1/sessions/{session_id}"),
                    client.get(f"/v1/traces/{session_id}"),
                    client.post(f"/v1/traces/{session_id}/verify"),
                ):
                    error = _error(response, 404, "SESSION_NOT_FOUND")
                    assert error["details"] == {"session_id": session_id}

    def test_ingest_key_may_not_read(self, server: LiveServer, recorded: Recorded) -> None:
        """Neither read nor audit: 403 naming read."""
        with http(server, SHIPPER) as client:
            for response in (
                client.get(f"/v1/sessions/{recorded.ended}"),
                client.get(f"/v1/traces/{recorded.ended}"),
                client.post(f"/v1/traces/{recorded.ended}/verify"),
            ):
                assert _error(response, 403, "FORBIDDEN")["details"]["required"] == "read"

    def test_server_sessions_keep_their_owner(self, server: LiveServer) -> None:
        """A session made through the server: its owner sees it as today, audit sees it too."""
        with http(server, BOB) as bob, http(server, AUDITOR) as auditor, http(server, OPS) as ops:
            parent = bob.post("/v1/sessions", json={"agent_id": "bot", "goal": "triage"}).json()
            created = bob.post(
                "/v1/sessions",
                json={
                    "agent_id": "bot",
                    "goal": "label",
                    "atlas_id": "com.example.github-ops",
                    "parent_session_id": parent["session_id"],
                },
            )
            session_id = created.json()["session_id"]
            seen_by_bob = bob.get(f"/v1/sessions/{session_id}").json()
            audited = auditor.get(f"/v1/sessions/{session_id}").json()
            assert audited["metadata"][OWNER_KEY] == "key:bob"
            assert audited["status"] == "active"
            assert audited["atlas_id"] == seen_by_bob["atlas_id"] == "com.example.github-ops"
            assert audited["parent_session_id"] == parent["session_id"]
            assert seen_by_bob["status"] == "active"
            # An audit key that made a session sees it as its owner does (live counts).
            mine = ops.post("/v1/sessions", json={"agent_id": "bot", "goal": "deploy"}).json()
            own_view = ops.get(f"/v1/sessions/{mine['session_id']}").json()
            assert own_view == mine
            assert ops.get("/v1/sessions").json()["total"] == 1
            # Audit reads; it does not make a key an owner: it may not end another's session.
            _error(ops.delete(f"/v1/sessions/{session_id}"), 404, "SESSION_NOT_FOUND")
            assert bob.delete(f"/v1/sessions/{session_id}").status_code == 204
            assert auditor.get(f"/v1/sessions/{session_id}").json()["status"] == "ended"

    def test_client_reads_a_stored_session(self, server: LiveServer, recorded: Recorded) -> None:
        """Client.session, trace_events and verify work on stored sessions with an audit key."""
        with Client(server.url, api_key=AUDITOR) as client:
            info = client.session(recorded.ended)
            events = client.trace_events(recorded.ended)
            verified = client.verify(recorded.ended)
        assert (info.agent_id, info.active) == ("triage-bot", False)
        assert events[0].event_type == ev.SESSION_STARTED
        assert events[-1].event_type == ev.SESSION_ENDED
        assert verified.valid and verified.event_count == len(events)


class TestStoredTraces:
    def test_audit_reads_traces_with_filters(self, server: LiveServer, recorded: Recorded) -> None:
        """event_type, since_sequence and limit filter a stored session's events (JSON)."""
        with http(server, AUDITOR) as client:
            whole = client.get(f"/v1/traces/{recorded.ended}", params={"limit": 1000}).json()
            page = client.get(
                f"/v1/traces/{recorded.ended}", params={"since_sequence": 2, "limit": 3}
            ).json()
            decided = client.get(
                f"/v1/traces/{recorded.ended}", params={"event_type": ev.ACTION_DENIED}
            ).json()
        events = whole["events"]
        assert whole["total"] == len(events) and whole["last_sequence"] == len(events) - 1
        assert [e["sequence"] for e in page["events"]] == [3, 4, 5]
        assert page["total"] == len(events)
        assert [e["payload"]["action_id"] for e in decided["events"]] == ["github.repo.delete"]

    @pytest.mark.parametrize("limit", [1, 2, 1000])
    def test_a_type_filter_reads_a_page_at_a_time(
        self,
        server: LiveServer,
        recorded: Recorded,
        monkeypatch: pytest.MonkeyPatch,
        limit: int,
    ) -> None:
        """Filtered over pages of a few events: the same events as filtering the whole."""
        monkeypatch.setattr(routes, "_SCAN_PAGE", 3)
        path = f"/v1/traces/{recorded.ended}"
        with http(server, AUDITOR) as client:
            whole = client.get(path, params={"limit": 1000}).json()["events"]
            for event_type in (ev.POLICY_EVALUATED, ev.ACTION_REQUESTED, ev.SESSION_ENDED):
                for since in (None, 4):
                    params: dict[str, Any] = {"event_type": event_type, "limit": limit}
                    if since is not None:
                        params["since_sequence"] = since
                    got = client.get(path, params=params).json()["events"]
                    expected = [
                        e
                        for e in whole
                        if e["event_type"] == event_type
                        and (since is None or e["sequence"] > since)
                    ]
                    assert got == expected[:limit], (event_type, since)

    def test_audit_reads_ndjson(self, server: LiveServer, recorded: Recorded) -> None:
        """Accept: application/x-ndjson streams the same events a line each."""
        with http(server, AUDITOR) as client:
            response = client.get(
                f"/v1/traces/{recorded.active}",
                headers={"Accept": "application/x-ndjson"},
                params={"limit": 1000},
            )
            as_json = client.get(f"/v1/traces/{recorded.active}", params={"limit": 1000})
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [orjson.loads(line) for line in response.content.splitlines()]
        assert lines == as_json.json()["events"]
        assert lines[0]["event_type"] == ev.SESSION_STARTED

    def test_audit_verifies(self, server: LiveServer, recorded: Recorded) -> None:
        """A stored session verifies over HTTP as it does locally."""
        with http(server, AUDITOR) as client:
            for session_id in (recorded.ended, recorded.active):
                answer = client.post(f"/v1/traces/{session_id}/verify").json()
                events = client.get(f"/v1/traces/{session_id}", params={"limit": 1000}).json()
                assert answer["valid"] is True
                assert answer["event_count"] == len(events["events"])
                assert answer["last_valid_hash"] == events["events"][-1]["event_hash"]


class TestTampered:
    def test_a_tampered_event_is_reported(self, tmp_path: Path) -> None:
        """An event rewritten in the database: verify says where; the session is still listed."""
        path = tmp_path / "traces.db"
        recorded = record_sessions(f"sqlite://{path}")
        sequence = tamper(path, recorded.ended, b'"github.issue.comment"', b'"github.issue.delete"')
        with serving(recorded.store) as live, http(live, AUDITOR) as client:
            answer = client.post(f"/v1/traces/{recorded.ended}/verify").json()
            other = client.post(f"/v1/traces/{recorded.active}/verify").json()
            listed = client.get("/v1/stored-sessions").json()
        assert answer["valid"] is False
        assert answer["errors"][0]["sequence"] == sequence > 0
        assert answer["errors"][0]["error"] == "hash_mismatch"
        assert other["valid"] is True
        assert listed["total"] == 2 and len(listed["items"]) == 2

    def test_a_malformed_event_is_reported(self, tmp_path: Path) -> None:
        """An event that is no longer an event: malformed_event, listed as unreadable."""
        path = tmp_path / "traces.db"
        recorded = record_sessions(f"sqlite://{path}")
        tamper(path, recorded.ended, b'"event_type"', b'"event_kind"')
        with serving(recorded.store) as live, http(live, AUDITOR) as client:
            answer = client.post(f"/v1/traces/{recorded.ended}/verify").json()
            listed = client.get("/v1/stored-sessions").json()
        assert answer["valid"] is False
        assert answer["errors"][0]["error"] == "malformed_event"
        assert [s["session_id"] for s in listed["items"]] == [recorded.active]
        assert listed["unreadable"][0]["error"] == "MALFORMED_EVENT"

    def test_an_index_that_lies_is_reported(self, tmp_path: Path) -> None:
        """A row whose type column disagrees with its event: verify answers index_mismatch,
        the list shows the session as unreadable, the session itself is an error."""
        path = tmp_path / "traces.db"
        recorded = record_sessions(f"sqlite://{path}")
        with contextlib.closing(sqlite3.connect(path)) as db:
            key = db.execute(
                "SELECT session_key FROM sessions WHERE session_id = ?", (recorded.ended,)
            ).fetchone()[0]
            db.execute(
                "UPDATE events SET event_type = 'policy.evaluated' WHERE id = ?", (key << 32,)
            )
            db.commit()
        with serving(recorded.store) as live, http(live, AUDITOR) as client:
            answer = client.post(f"/v1/traces/{recorded.ended}/verify").json()
            listed = client.get("/v1/stored-sessions").json()
            got = client.get(f"/v1/sessions/{recorded.ended}")
        assert answer["valid"] is False
        assert answer["errors"][0]["error"] == "index_mismatch"
        assert [s["session_id"] for s in listed["items"]] == [recorded.active]
        assert listed["unreadable"][0]["session_id"] == recorded.ended
        assert listed["unreadable"][0]["error"] == "TRACE_INDEX_MISMATCH"
        assert listed["total"] == 2
        assert got.status_code == 400
        assert got.json()["error"]["code"] == "TRACE_INDEX_MISMATCH"


def test_tampering_in_postgresql_is_reported(pg_url: str) -> None:
    """On PostgreSQL (verified as a stream): a rewritten event is hash_mismatch where it is,
    a row whose type column lies is index_mismatch; both sessions are still listed."""
    import psycopg

    recorded = record_sessions(pg_url)
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT min(sequence) FROM cra_events WHERE session_key = "
            "(SELECT session_key FROM cra_sessions WHERE session_id = %(session)s) AND "
            "position('github.issue.comment' in convert_from(event, 'UTF8')) > 0",
            {"session": recorded.ended},
        ).fetchone()
        assert row is not None
        sequence = int(row[0])
        conn.execute(
            "UPDATE cra_events SET event = convert_to(replace(convert_from(event, 'UTF8'), "
            "'github.issue.comment', 'github.issue.delete'), 'UTF8') "
            "WHERE session_key = (SELECT session_key FROM cra_sessions "
            "WHERE session_id = %(session)s) AND sequence = %(sequence)s",
            {"session": recorded.ended, "sequence": sequence},
        )
        conn.execute(
            "UPDATE cra_events SET event_type = 'action.approved' "
            "WHERE session_key = (SELECT session_key FROM cra_sessions "
            "WHERE session_id = %(session)s) AND sequence = 2",
            {"session": recorded.active},
        )
    with serving(pg_url) as live, http(live, AUDITOR) as client:
        rewritten = client.post(f"/v1/traces/{recorded.ended}/verify").json()
        lying = client.post(f"/v1/traces/{recorded.active}/verify").json()
        listed = client.get("/v1/stored-sessions").json()
    assert rewritten["valid"] is False
    assert rewritten["errors"][0] == {
        "sequence": sequence,
        "error": "hash_mismatch",
        "details": rewritten["errors"][0]["details"],
    }
    assert lying["valid"] is False
    assert lying["errors"][0]["error"] == "index_mismatch"
    assert [s["session_id"] for s in listed["items"]] == [recorded.ended, recorded.active]


@pytest.mark.parametrize("kind", STORES)
def test_every_store_serves_the_audit_routes(kind: str, request: pytest.FixtureRequest) -> None:
    """List, get, traces and verify of stored sessions on each store; others still see 404."""
    with stored_and_served(kind, request) as (recorded, live):
        with http(live, AUDITOR) as client:
            listed = client.get("/v1/stored-sessions").json()
            ended = client.get(f"/v1/sessions/{recorded.ended}").json()
            active = client.get(f"/v1/sessions/{recorded.active}").json()
            events = client.get(f"/v1/traces/{recorded.ended}", params={"limit": 2}).json()
            verified = client.post(f"/v1/traces/{recorded.ended}/verify").json()
            missing = client.get(f"/v1/sessions/{UNKNOWN}")
        with http(live, ALICE) as client:
            hidden = client.get(f"/v1/sessions/{recorded.ended}")
    assert [s["session_id"] for s in listed["items"]] == [recorded.ended, recorded.active]
    assert (ended["status"], active["status"]) == ("ended", "active")
    assert ended["resolution_count"] == 1
    assert [e["sequence"] for e in events["events"]] == [0, 1]
    assert events["total"] == ended["event_count"] == verified["event_count"]
    assert verified["valid"] is True
    assert missing.status_code == hidden.status_code == 404


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_ingested_sessions_are_audited(kind: str, request: pytest.FixtureRequest) -> None:
    """The central server's case: sessions another process sent to POST /v1/ingest/batch are
    listed, read, verified and replayed with an audit key, and invisible to the others."""
    with Runtime([GITHUB_OPS], store="memory://", writer="thread") as elsewhere:
        recorded = record_into(elsewhere, "memory://")
        elsewhere.flush()
        events = [
            event
            for session_id in (recorded.ended, recorded.active)
            for event in elsewhere.store.read(session_id)
        ]
    batch = b"".join(orjson.dumps(e.model_dump(mode="json")) + b"\n" for e in events)
    with serving(store_url(kind, request)) as live:
        with http(live, SHIPPER) as shipper:
            sent = shipper.post(
                "/v1/ingest/batch",
                content=batch,
                headers={"content-type": "application/x-ndjson"},
            )
            assert sent.status_code == 200, sent.text
        with http(live, AUDITOR) as client:
            listed = client.get("/v1/stored-sessions").json()
            ended = client.get(f"/v1/sessions/{recorded.ended}").json()
            traces = client.get(f"/v1/traces/{recorded.ended}", params={"limit": 1000}).json()
            verified = client.post(f"/v1/traces/{recorded.ended}/verify").json()
            replayed = client.post(f"/v1/traces/{recorded.ended}/replay", json={}).json()
        with http(live, ALICE) as client:
            hidden = client.get(f"/v1/traces/{recorded.ended}")
    assert [s["session_id"] for s in listed["items"]] == [recorded.ended, recorded.active]
    assert [s["status"] for s in listed["items"]] == ["ended", "active"]
    assert ended["agent_id"] == "triage-bot" and ended["status"] == "ended"
    assert len(traces["events"]) == verified["event_count"] == ended["event_count"]
    assert verified["valid"] is True
    assert replayed["identical"] is True and replayed["counts"]["decisions"] > 0
    assert hidden.status_code == 404
