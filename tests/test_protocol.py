from __future__ import annotations

import copy
import json
from importlib import resources

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from cra_agents.protocol import (
    AllowedAction,
    CARPRequest,
    CARPResolution,
    Constraint,
    ContextBlock,
    Decision,
    DeniedAction,
    ExecuteResponse,
    RateLimit,
    bundled_schema,
    generate_schemas,
)
from cra_agents.protocol._common import trusted
from cra_agents.protocol._schemas import SCHEMA_NAMES

REGENERATE = "bundled schemas are stale: run python -m cra_agents.protocol._schemas"
SESSION_ID = "0190a5c4-7b1e-7000-8000-000000000100"
REQUEST_ID = "0190a5c4-7b1e-7000-8000-000000000001"
RESOLUTION_ID = "0190a5c4-7b1e-7000-8000-000000000002"
TRACE_ID = "0190a5c4-7b1e-7000-8000-000000000003"
MINIMAL_RESOLVE: dict[str, object] = {
    "carp_version": "1.0",
    "request_id": REQUEST_ID,
    "timestamp": "2024-12-28T12:00:00.000Z",
    "operation": "resolve",
    "requester": {"agent_id": "conformance-test-agent", "session_id": SESSION_ID},
    "task": {"goal": "Manage resources in the test environment"},
}


def request(**changes: object) -> dict[str, object]:
    """The minimal resolve request with top-level keys replaced (None removes a key)."""
    document: dict[str, object] = copy.deepcopy(MINIMAL_RESOLVE)
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return document


def model_verdict(model: type[BaseModel], document: object) -> bool:
    try:
        model.model_validate(document)
    except ValidationError:
        return False
    return True


@pytest.fixture(scope="module")
def generated():
    return generate_schemas()


@pytest.fixture(scope="module")
def upstream_request_schema(conformance_dir):
    return json.loads((conformance_dir / "schemas" / "carp-request.schema.json").read_text())


class TestBundledSchemas:
    @pytest.mark.parametrize("name", SCHEMA_NAMES)
    def test_bundled_equals_generated(self, generated, name):
        """Each bundled schema file is exactly what the models generate today."""
        assert bundled_schema(name) == generated[name], REGENERATE

    def test_no_stale_files(self, generated):
        """The schemas directory holds exactly the generated schemas, nothing left over."""
        directory = resources.files("cra_agents.protocol").joinpath("schemas")
        files = {entry.name for entry in directory.iterdir() if entry.name.endswith(".json")}
        assert files == {f"{name}.json" for name in generated}, REGENERATE

    @pytest.mark.parametrize("name", SCHEMA_NAMES)
    def test_valid_draft_2020_12(self, name):
        """Every bundled schema is itself a valid JSON Schema 2020-12 document."""
        schema = bundled_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)

    def test_unknown_name(self):
        """An unknown schema name is a KeyError listing the known names."""
        with pytest.raises(KeyError, match="carp-request"):
            bundled_schema("carp-reqest")

    def test_strict_atlas_differs_from_lenient(self):
        """The strict atlas schema drops the Rust-core sections the lenient one carries."""
        lenient = bundled_schema("atlas-manifest")["properties"]
        strict = bundled_schema("atlas-manifest.strict")["properties"]
        assert {"checkpoints", "steward", "sources"} <= set(lenient)
        assert not {"checkpoints", "steward", "sources"} & set(strict)
        assert "context_blocks" in strict


class TestCARPRequest:
    def test_minimal_resolve(self):
        """A minimal resolve request validates and fills the task defaults."""
        parsed = CARPRequest.model_validate(MINIMAL_RESOLVE)
        assert parsed.task.risk_tier == "low"
        assert parsed.execution is None

    def test_execute_without_execution(self):
        """operation 'execute' without an execution object is a ValidationError."""
        with pytest.raises(ValidationError, match="requires an 'execution' object"):
            CARPRequest.model_validate(request(operation="execute"))

    def test_execute_with_execution(self):
        """operation 'execute' with an execution object validates."""
        execution = {
            "resolution_id": RESOLUTION_ID,
            "action_id": "resource.get",
            "parameters": {"resource_id": "r1"},
        }
        parsed = CARPRequest.model_validate(request(operation="execute", execution=execution))
        assert parsed.execution is not None
        assert parsed.execution.action_id == "resource.get"

    @pytest.mark.parametrize(
        "changes",
        [
            {"unexpected": 1},
            {"request_id": "not-a-uuid"},
            {"timestamp": "2024-12-28T12:00:00"},
            {"operation": "delete"},
            {"atlas_ids": ["Bad.Id"]},
            {"requester": {"agent_id": "", "session_id": SESSION_ID}},
            {"task": {"goal": "x", "extra": True}},
        ],
    )
    def test_rejected(self, changes):
        """Unknown keys, bad ids, offset-less timestamps and bad enums are rejected."""
        with pytest.raises(ValidationError):
            CARPRequest.model_validate(request(**changes))

    def test_dump_omits_absent_optionals(self):
        """Absent optional sections are omitted from the wire form, never null."""
        dumped = CARPRequest.model_validate(MINIMAL_RESOLVE).model_dump(mode="json")
        assert not {"execution", "atlas_ids", "context"} & set(dumped)
        assert "parent_session_id" not in dumped["requester"]

    def test_frozen(self):
        """Wire models are immutable."""
        parsed = CARPRequest.model_validate(MINIMAL_RESOLVE)
        with pytest.raises(ValidationError):
            parsed.operation = "execute"  # type: ignore[misc]


CONFORMANCE_REQUEST_CASES = [
    pytest.param(request(), True, None, id="schema.carp.request.valid"),
    pytest.param(
        request(carp_version="2.0"),
        False,
        ("carp_version",),
        id="schema.carp.request.invalid_version",
    ),
    pytest.param(request(task=None), False, None, id="schema.carp.request.missing_required"),
    pytest.param(
        request(operation="execute"),
        False,
        None,
        id="schema.carp.request.execute_requires_execution",
    ),
]


@pytest.mark.conformance
class TestConformanceRequestCases:
    @pytest.mark.parametrize(("document", "valid", "loc"), CONFORMANCE_REQUEST_CASES)
    def test_expected_verdict(self, document, valid, loc):
        """Our model gives each upstream case its expected verdict and error location."""
        assert model_verdict(CARPRequest, document) is valid
        if loc is not None:
            with pytest.raises(ValidationError) as info:
                CARPRequest.model_validate(document)
            assert info.value.errors()[0]["loc"] == loc

    @pytest.mark.parametrize(("document", "valid", "loc"), CONFORMANCE_REQUEST_CASES)
    def test_agrees_with_upstream_schema(self, upstream_request_schema, document, valid, loc):
        """The model's verdict equals jsonschema's with the upstream CARP request schema."""
        validator = jsonschema.Draft202012Validator(upstream_request_schema)
        assert validator.is_valid(document) is valid
        assert model_verdict(CARPRequest, document) is validator.is_valid(document)
        if loc is not None:
            assert [tuple(e.absolute_path) for e in validator.iter_errors(document)] == [loc]

    @pytest.mark.parametrize(
        ("document", "valid"),
        [
            pytest.param(request(), True, id="valid"),
            pytest.param(request(carp_version="2.0"), False, id="invalid_version"),
            pytest.param(request(task=None), False, id="missing_required"),
            pytest.param(
                request(operation="execute"),
                False,
                id="execute_requires_execution",
            ),
        ],
    )
    def test_bundled_schema_agrees(self, document, valid):
        """Our bundled carp-request schema gives each upstream case the same verdict."""
        validator = jsonschema.Draft202012Validator(bundled_schema("carp-request"))
        assert validator.is_valid(document) is valid


def allowed_fields(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "action_id": "resource.get",
        "name": "Get Resource",
        "description": "Retrieve a resource by ID",
        "parameters_schema": {"type": "object", "required": ["resource_id"]},
        "returns_schema": None,
        "risk_tier": "low",
        "requires_confirmation": False,
        "idempotent": True,
        "rate_limit": None,
    }
    fields.update(changes)
    return fields


def resolution_fields() -> dict[str, object]:
    return {
        "carp_version": "1.0",
        "resolution_id": RESOLUTION_ID,
        "request_id": REQUEST_ID,
        "timestamp": "2024-12-28T12:00:00.123456+00:00",
        "decision": trusted(
            Decision,
            {
                "type": "partial",
                "reason": "Some actions are denied",
                "approval_id": None,
                "expires_at": None,
            },
        ),
        "context_blocks": [
            trusted(
                ContextBlock,
                {
                    "block_id": "overview",
                    "source": "com.cra.conformance.simple",
                    "content_type": "text/markdown",
                    "content": "# Overview",
                    "priority": 100,
                    "token_estimate": 3,
                    "metadata": {"name": "Resource Overview"},
                },
            )
        ],
        "allowed_actions": [
            trusted(AllowedAction, allowed_fields()),
            trusted(
                AllowedAction,
                allowed_fields(
                    action_id="resource.create",
                    rate_limit=trusted(RateLimit, {"max_calls": 5, "window_seconds": 60}),
                ),
            ),
        ],
        "denied_actions": [
            trusted(
                DeniedAction,
                {
                    "action_id": "resource.delete",
                    "reason": "Deletion not permitted",
                    "policy_id": "deny-delete",
                },
            )
        ],
        "constraints": [
            trusted(
                Constraint,
                {
                    "constraint_id": "rl",
                    "type": "rate_limit",
                    "parameters": {"max_calls": 5, "window_seconds": 60},
                },
            )
        ],
        "ttl_seconds": 300,
        "trace_id": TRACE_ID,
    }


class TestTrusted:
    def test_allowed_action_equals_validated(self):
        """trusted(AllowedAction) equals model_validate of the same fields."""
        fields = allowed_fields()
        built = trusted(AllowedAction, dict(fields))
        validated = AllowedAction.model_validate(fields)
        assert built == validated
        assert built.model_dump(mode="json") == validated.model_dump(mode="json")
        assert built.model_dump_json() == validated.model_dump_json()
        assert built.model_fields_set == validated.model_fields_set

    def test_resolution_equals_validated(self):
        """trusted(CARPResolution) equals model_validate of the same fields."""
        built = trusted(CARPResolution, resolution_fields())
        validated = CARPResolution.model_validate(resolution_fields())
        assert built == validated
        assert built.model_dump_json() == validated.model_dump_json()

    def test_resolution_round_trips_through_json(self):
        """The trusted resolution's wire form validates back to an equal model."""
        built = trusted(CARPResolution, resolution_fields())
        reparsed = CARPResolution.model_validate_json(built.model_dump_json())
        assert reparsed == built
        allowed = reparsed.allowed("resource.create")
        denied = reparsed.denied("resource.delete")
        assert allowed is not None
        assert allowed.rate_limit == RateLimit(max_calls=5, window_seconds=60)
        assert denied is not None
        assert denied.policy_id == "deny-delete"
        assert reparsed.allowed("resource.delete") is None

    def test_wire_form_matches_bundled_schema(self):
        """The trusted resolution's wire form is valid against the bundled schema."""
        built = trusted(CARPResolution, resolution_fields())
        jsonschema.validate(built.model_dump(mode="json"), bundled_schema("carp-resolution"))

    def test_trusted_instance_is_frozen(self):
        """A trusted instance is as immutable as a validated one."""
        built = trusted(AllowedAction, allowed_fields())
        with pytest.raises(ValidationError):
            built.name = "changed"  # type: ignore[misc]


class TestSerialisation:
    def test_context_block_without_token_estimate(self):
        """A ContextBlock without token_estimate or metadata omits those keys."""
        block = ContextBlock(
            block_id="b", source="s", content_type="text/plain", content="c", priority=1
        )
        dumped = block.model_dump(mode="json")
        assert dumped == {
            "block_id": "b",
            "source": "s",
            "content_type": "text/plain",
            "content": "c",
            "priority": 1,
        }
        assert "token_estimate" not in json.loads(block.model_dump_json())
        assert block.name == "b"

    def test_context_block_zero_token_estimate_kept(self):
        """A token_estimate of 0 is a value, not an absence, and is kept."""
        block = ContextBlock(
            block_id="b",
            source="s",
            content_type="text/plain",
            content="c",
            priority=1,
            token_estimate=0,
            metadata={"name": "Named"},
        )
        assert block.model_dump(mode="json")["token_estimate"] == 0
        assert block.name == "Named"

    def test_decision_keeps_null_reason(self):
        """Decision writes reason None as null, as the schema's nullable field."""
        decision = Decision(type="allow")
        assert decision.model_dump(mode="json") == {
            "type": "allow",
            "reason": None,
            "approval_id": None,
            "expires_at": None,
        }
        assert '"reason":null' in decision.model_dump_json()

    def test_allowed_action_omits_absent_optionals(self):
        """AllowedAction omits absent parameters_schema, returns_schema and rate_limit."""
        dumped = AllowedAction.model_validate(allowed_fields(parameters_schema=None)).model_dump(
            mode="json"
        )
        assert not {"parameters_schema", "returns_schema", "rate_limit"} & set(dumped)

    def test_execute_response_omits_absent_optionals(self):
        """ExecuteResponse omits result, error and trace_id when absent."""
        response = ExecuteResponse(
            execution_id=RESOLUTION_ID,
            request_id=REQUEST_ID,
            resolution_id=RESOLUTION_ID,
            timestamp="2024-12-28T12:00:00+00:00",
            status="pending_approval",
        )
        assert not {"result", "error", "trace_id"} & set(response.model_dump(mode="json"))
