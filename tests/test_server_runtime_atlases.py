"""Runtime.load_atlas / unload_atlas: atlases loaded and unloaded while the runtime runs."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cra_agents import (
    ActionDeniedError,
    AtlasConflictError,
    AtlasNotFoundError,
    Runtime,
)
from cra_agents._requests import execute_request, resolve_request


def _manifest(
    atlas_id: str = "com.example.extra", action: str = "extra.thing.do"
) -> dict[str, Any]:
    return {
        "atlas_version": "1.0",
        "atlas_id": atlas_id,
        "version": "1.0.0",
        "name": "Extra",
        "description": "An atlas loaded at run time.",
        "actions": [
            {
                "action_id": action,
                "name": "Do the thing",
                "description": "Does it.",
                "parameters_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            }
        ],
    }


def test_load_then_resolve_and_call(github_ops):
    with Runtime([github_ops]) as rt:
        atlas = rt.load_atlas(_manifest())
        assert atlas.atlas_id == "com.example.extra"
        assert [a.atlas_id for a in rt.atlases] == ["com.example.github-ops", "com.example.extra"]
        assert rt.atlas("com.example.extra") is atlas
        s = rt.create_session("bot", "do the thing")
        resolution = rt.resolve(resolve_request(s))
        assert "extra.thing.do" in {a.action_id for a in resolution.allowed_actions}
        auth = rt.authorize(s.session_id, "extra.thing.do", {"n": 1})
        rt.record_outcome(auth, result={"ok": True})


def test_conflicts_are_refused(github_ops):
    with Runtime([github_ops]) as rt:
        with pytest.raises(AtlasConflictError) as info:
            rt.load_atlas(github_ops)
        assert info.value.status == 409
        with pytest.raises(AtlasConflictError, match=r"github\.issue\.list"):
            rt.load_atlas(_manifest(action="github.issue.list"))
        assert len(rt.atlases) == 1


def test_unload_refuses_later_calls_as_undeclared(github_ops):
    with Runtime([github_ops]) as rt:
        rt.load_atlas(_manifest())
        s = rt.create_session("bot", "do the thing")
        resolution = rt.resolve(resolve_request(s))
        first = rt.authorize(s.session_id, "extra.thing.do", {"n": 1})  # decided before
        assert rt.unload_atlas("com.example.extra").atlas_id == "com.example.extra"
        rt.record_outcome(first, result=1)  # what was decided stands
        with pytest.raises(ActionDeniedError) as info:
            rt.authorize(s.session_id, "extra.thing.do", {"n": 2})
        assert "undeclared" in (info.value.policy_id or "") + str(info.value)
        with pytest.raises(ActionDeniedError):
            rt.execute(execute_request(s, resolution.resolution_id, "extra.thing.do", {"n": 3}))
        later = rt.resolve(resolve_request(s))
        assert "extra.thing.do" not in {a.action_id for a in later.allowed_actions}
        with pytest.raises(AtlasNotFoundError):
            rt.unload_atlas("com.example.extra")
        assert rt.verify(s.session_id).valid


def test_concurrent_loads_are_serialised(github_ops):
    with Runtime([github_ops]) as rt:
        errors: list[BaseException] = []

        def load(i: int) -> None:
            try:
                rt.load_atlas(_manifest(f"com.example.x{i}", f"x{i}.thing.do"))
            except BaseException as exc:  # noqa: BLE001  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(rt.atlases) == 9
        assert all(rt.engine.is_declared(f"x{i}.thing.do") for i in range(8))
