"""``POST /v1/traces/{session_id}/replay``: a stored session re-decided against a candidate atlas.

Real server on 127.0.0.1 over a SQLite store that a runtime of its own filled (see
``test_server_audit``); candidates are the github-ops example atlas with a policy added.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import cra_agents.server._replay as replay_route
from cra_agents import Client
from cra_agents._requests import execute_request, resolve_request
from cra_agents.atlas import load_atlas
from cra_agents.server._replay import MAX_REPLAY_EVENTS
from tests.harness.live_server import LiveServer
from tests.test_server_audit import (
    ALICE,
    AUDITOR,
    BOB,
    GITHUB_OPS,
    ISSUE,
    SHIPPER,
    STORES,
    UNKNOWN,
    Recorded,
    http,
    record_sessions,
    recorded_in,
    serving,
    stored_and_served,
    tamper,
)

ATLAS_ID = "com.example.github-ops"


def manifest() -> dict[str, Any]:
    """The github-ops manifest, as ``POST /v1/atlases`` takes it."""
    atlas = load_atlas(GITHUB_OPS)
    document: dict[str, Any] = atlas.manifest.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return document


def stricter() -> dict[str, Any]:
    """A candidate that denies commenting on issues (the recorded session commented)."""
    candidate = copy.deepcopy(manifest())
    candidate["version"] = "9.0.0"
    candidate["policies"].append(
        {
            "policy_id": "deny-comments",
            "name": "Deny comments",
            "type": "deny",
            "priority": 2000,
            "actions": ["github.issue.comment"],
            "parameters": {"reason": "no more comments"},
        }
    )
    return candidate


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def recorded(request: pytest.FixtureRequest) -> Iterator[Recorded]:
    yield from recorded_in(request)


@pytest.fixture(scope="module")
def server(recorded: Recorded) -> Iterator[LiveServer]:
    with serving(recorded.store) as live:
        yield live


def _replay(client: httpx.Client, session_id: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1/traces/{session_id}/replay", json=body)


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


class TestReplay:
    def test_the_loaded_atlases_replay_identically(
        self, server: LiveServer, recorded: Recorded
    ) -> None:
        """Without a candidate: every decision as recorded (a determinism check)."""
        with http(server, AUDITOR) as client:
            report = _replay(client, recorded.ended).json()
        assert report["session_id"] == recorded.ended
        assert report["identical"] is True
        counts = report["counts"]
        assert counts["changed"] == 0 and counts["decisions"] == counts["identical"] > 0
        kinds = {d["kind"] for d in report["decisions"]}
        assert kinds == {"resolve", "action", "execute"}
        assert not any(d["changed"] for d in report["decisions"])
        assert report["atlases"] == [
            {
                "atlas_id": ATLAS_ID,
                "version": load_atlas(GITHUB_OPS).version,
                "digest": load_atlas(GITHUB_OPS).digest,
                "candidate": False,
            }
        ]
        assert report["default_deny"] is False
        events = client_events(server, recorded.ended)
        assert report["event_count"] == len(events)

    def test_a_stricter_candidate_flags_the_changed_decisions(
        self, server: LiveServer, recorded: Recorded
    ) -> None:
        """Denying comments changes the comment's execute (and its place in the resolution)."""
        with http(server, AUDITOR) as client:
            report = _replay(client, recorded.ended, atlas=stricter()).json()
            only = _replay(client, recorded.ended, atlas=stricter(), changed_only=True).json()
        assert report["identical"] is False
        changed = [d for d in report["decisions"] if d["changed"]]
        assert report["counts"]["changed"] == len(changed) >= 2
        execute = next(d for d in changed if d["kind"] == "execute")
        assert execute["action_id"] == "github.issue.comment"
        assert execute["before"][0] == "allow"
        assert execute["after"] == ["deny", "deny-comments"]
        action = next(d for d in changed if d["kind"] == "action")
        assert action["action_id"] == "github.issue.comment"
        # Everything else stands: the denial of repo.delete, the listing of issues.
        same = {d["action_id"] for d in report["decisions"] if not d["changed"]}
        assert {"github.repo.delete", "github.issue.list"} <= same
        assert report["atlases"][0]["candidate"] is True
        assert report["atlases"][0]["version"] == "9.0.0"
        assert only["decisions"] == changed
        assert only["counts"] == report["counts"]

    def test_the_servers_atlases_stay_as_they_are(
        self, server: LiveServer, recorded: Recorded
    ) -> None:
        """A replay loads nothing: the server's atlases and its decisions are untouched."""
        before = server.runtime.atlases
        with http(server, AUDITOR) as auditor, http(server, ALICE) as alice:
            listed = alice.get("/v1/atlases").json()
            assert _replay(auditor, recorded.ended, atlas=stricter()).status_code == 200
            assert alice.get("/v1/atlases").json() == listed
            created = alice.post("/v1/sessions", json={"agent_id": "bot", "goal": "g"}).json()
            info = server.runtime.session(created["session_id"])
            wire = resolve_request(info).model_dump(mode="json", exclude_none=True)
            resolution = alice.post("/v1/resolve", json=wire).json()
            call = execute_request(info, resolution["resolution_id"], "github.issue.comment", ISSUE)
            executed = alice.post("/v1/execute", json=call.model_dump(mode="json"))
            assert executed.status_code == 200, executed.text  # the candidate's denial: not here
        assert server.runtime.atlases == before
        assert listed["items"][0]["version"] == load_atlas(GITHUB_OPS).version

    def test_atlas_ids_and_default_deny(self, server: LiveServer, recorded: Recorded) -> None:
        """atlas_ids picks loaded atlases (none: every call is undeclared); default_deny too."""
        with http(server, AUDITOR) as client:
            named = _replay(client, recorded.ended, atlas_ids=[ATLAS_ID]).json()
            bare = _replay(client, recorded.ended, atlas_ids=[]).json()
            strict = _replay(client, recorded.ended, default_deny=True).json()
        assert named["identical"] is True
        assert bare["atlases"] == [] and bare["identical"] is False
        assert strict["default_deny"] is True and strict["identical"] is False

    def test_an_active_session_replays_as_far_as_it_went(
        self, server: LiveServer, recorded: Recorded
    ) -> None:
        """A session still going replays what is stored of it."""
        with http(server, AUDITOR) as client:
            report = _replay(client, recorded.active).json()
        assert report["identical"] is True
        assert report["counts"]["decisions"] > 0

    def test_client_replay(self, server: LiveServer, recorded: Recorded) -> None:
        """Client.replay posts a candidate (a manifest dict or a path) and returns the report."""
        with Client(server.url, api_key=AUDITOR) as client:
            same = client.replay(recorded.ended, GITHUB_OPS)
            report = client.replay(recorded.ended, stricter(), changed_only=True)
            strict = client.replay(recorded.ended, atlas_ids=[ATLAS_ID], default_deny=True)
        assert same["identical"] is True and same["atlases"][0]["candidate"] is True
        assert report["counts"]["changed"] == len(report["decisions"]) >= 2
        assert strict["default_deny"] is True


def client_events(server: LiveServer, session_id: str) -> list[dict[str, Any]]:
    with http(server, AUDITOR) as client:
        events: list[dict[str, Any]] = client.get(
            f"/v1/traces/{session_id}", params={"limit": 1000}
        ).json()["events"]
    return events


class TestWhoMayReplay:
    def test_the_owner_replays_its_own_sessions(self, server: LiveServer) -> None:
        """A read key replays a session it made through the server; another key gets 404."""
        with http(server, BOB) as bob, http(server, ALICE) as alice:
            session = bob.post("/v1/sessions", json={"agent_id": "bot", "goal": "triage"}).json()
            session_id = session["session_id"]
            assert bob.delete(f"/v1/sessions/{session_id}").status_code == 204
            report = _replay(bob, session_id, atlas=stricter())
            assert report.status_code == 200, report.text
            assert report.json()["identical"] is True  # no decision to change
            error = _error(_replay(alice, session_id), 404, "SESSION_NOT_FOUND")
            assert error["details"] == {"session_id": session_id}

    def test_stored_sessions_are_404_without_audit(
        self, server: LiveServer, recorded: Recorded
    ) -> None:
        """A read/write key gets the 404 of an unknown session for a stored one."""
        with http(server, ALICE) as client:
            stored = _error(_replay(client, recorded.ended), 404, "SESSION_NOT_FOUND")
            unknown = _error(_replay(client, UNKNOWN), 404, "SESSION_NOT_FOUND")
        assert stored["message"] == f"no session {recorded.ended}"
        assert unknown["message"] == f"no session {UNKNOWN}"

    def test_scopes_and_credentials(self, server: LiveServer, recorded: Recorded) -> None:
        """An ingest-only key is 403 (read needed); no credential is 401."""
        with http(server, SHIPPER) as client:
            error = _error(_replay(client, recorded.ended), 403, "FORBIDDEN")
        assert error["details"]["required"] == "read"
        with http(server, None) as client:
            _error(_replay(client, recorded.ended), 401, "UNAUTHORIZED")


class TestReplayErrors:
    def test_unknown_session_and_atlas(self, server: LiveServer, recorded: Recorded) -> None:
        """404 SESSION_NOT_FOUND for a session the store lacks, ATLAS_NOT_FOUND for an id."""
        with http(server, AUDITOR) as client:
            for session_id in (UNKNOWN, "not-a-session"):
                error = _error(_replay(client, session_id), 404, "SESSION_NOT_FOUND")
                assert error["details"] == {"session_id": session_id}
            _error(_replay(client, recorded.ended, atlas_ids=["nope"]), 404, "ATLAS_NOT_FOUND")

    def test_an_invalid_candidate_is_refused_as_post_atlases_refuses_it(
        self, server: LiveServer, recorded: Recorded
    ) -> None:
        """400 with the same error body (code, message, details) as POST /v1/atlases."""
        broken = manifest()
        broken["policies"][0]["type"] = "maybe"
        with http(server, AUDITOR) as auditor, http(server, ALICE) as alice:
            replayed = _error(
                _replay(auditor, recorded.ended, atlas=broken), 400, "INVALID_ATLAS_MANIFEST"
            )
            loaded = alice.post("/v1/atlases", json=broken).json()["error"]
        for key in ("code", "message", "details"):
            assert replayed[key] == loaded[key]
        assert replayed["details"]["path"].startswith("/policies/0")

    def test_a_bad_body_is_400(self, server: LiveServer, recorded: Recorded) -> None:
        """Unknown fields and wrong types: 400 SCHEMA_VALIDATION_ERROR."""
        with http(server, AUDITOR) as client:
            _error(_replay(client, recorded.ended, atlass={}), 400, "SCHEMA_VALIDATION_ERROR")
            _error(_replay(client, recorded.ended, atlas=[1]), 400, "SCHEMA_VALIDATION_ERROR")

    def test_a_conflicting_candidate_is_409(self, server: LiveServer, recorded: Recorded) -> None:
        """A candidate under another id that declares a loaded atlas's actions cannot join it."""
        other = manifest()
        other["atlas_id"] = "com.example.github-ops-copy"
        with http(server, AUDITOR) as client:
            response = _replay(client, recorded.ended, atlas=other)
        assert response.status_code == 409, response.text

    def test_a_session_too_long_is_413(self, server: LiveServer, recorded: Recorded) -> None:
        """Longer than the server replays: 413 before any event is read, saying what to do."""
        server.app.state.replay_max_events = 3
        try:
            with http(server, AUDITOR) as client:
                error = _error(_replay(client, recorded.ended), 413, "PAYLOAD_TOO_LARGE")
        finally:
            del server.app.state.replay_max_events
        assert error["details"]["reason"] == "replay_too_large"
        assert error["details"]["limit"] == 3
        assert "cra trace replay" in error["message"]
        assert MAX_REPLAY_EVENTS >= 10_000

    def test_a_tampered_session_is_422(self, tmp_path: Path) -> None:
        """A chain that does not verify is not replayed: 422 REPLAY_ERROR."""
        path = tmp_path / "traces.db"
        recorded = record_sessions(f"sqlite://{path}")
        tamper(path, recorded.ended, b'"github.issue.comment"', b'"github.issue.delete"')
        with serving(recorded.store) as live, http(live, AUDITOR) as client:
            error = _error(_replay(client, recorded.ended), 422, "REPLAY_ERROR")
            fine = _replay(client, recorded.active)
        assert "does not verify" in error["message"]
        assert fine.status_code == 200


@pytest.mark.parametrize("kind", STORES)
def test_every_store_replays(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same replay on each store, read a few events at a time: the same report."""
    with stored_and_served(kind, request) as (recorded, live), http(live, AUDITOR) as client:
        whole = _replay(client, recorded.ended, atlas=stricter()).json()
        monkeypatch.setattr(replay_route, "_PAGE", 3)
        paged = _replay(client, recorded.ended, atlas=stricter()).json()
        events = client.get(f"/v1/traces/{recorded.ended}", params={"limit": 1000}).json()
    assert paged == whole
    assert whole["event_count"] == len(events["events"]) > 3
    assert whole["counts"]["changed"] >= 2
