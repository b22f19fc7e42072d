"""Hostile atlas input: whatever arrives, load_atlas returns an Atlas or raises AtlasError."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cra_agents as cra

_KEYS = [
    "atlas_version",
    "atlas_id",
    "version",
    "name",
    "description",
    "actions",
    "policies",
    "capabilities",
    "context_packs",
    "context_blocks",
    "action_id",
    "policy_id",
    "type",
    "conditions",
    "parameters",
    "risk_tiers",
    "agents",
    "time_window",
    "priority",
    "files",
    "efect",
    "reason",
    "max_calls",
    "window_seconds",
    "keywords",
    "inject_mode",
]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["1.0", "allow", "deny", "require_approval", "*"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def _load(source: Any) -> None:
    error: cra.AtlasError | None = None
    try:
        cra.load_atlas(source)
    except cra.AtlasError as exc:  # anything else propagates and fails the test
        error = exc
    if error is not None:
        assert error.code
        assert error.reason


class TestLoaderNeverCrashes:
    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(document=_json)
    def test_structured_documents(self, document):
        """Random JSON-shaped documents load or raise AtlasError, never anything else."""
        base = {
            "atlas_version": "1.0",
            "atlas_id": "com.example.fuzz",
            "version": "1.0.0",
            "name": "Fuzz",
            "description": "fuzz",
        }
        if isinstance(document, dict):
            _load({**base, **document})
        _load(document if isinstance(document, dict) else {"value": document})

    @settings(max_examples=200, deadline=None, database=None)
    @given(data=st.binary(max_size=200))
    def test_raw_bytes(self, data, tmp_path_factory):
        """Arbitrary bytes in atlas.json load or raise AtlasError."""
        path = tmp_path_factory.mktemp("fuzz") / "atlas.json"
        path.write_bytes(data)
        _load(path)

    @settings(max_examples=100, deadline=None, database=None)
    @given(document=_json)
    def test_mutated_example(self, document, github_ops):
        """The example atlas with a random value spliced into a policy still loads or refuses
        cleanly."""
        manifest = json.loads((github_ops / "atlas.json").read_text("utf-8"))
        manifest["policies"][0]["conditions"] = document
        manifest["actions"][0]["rate_limit"] = document
        _load(manifest)
