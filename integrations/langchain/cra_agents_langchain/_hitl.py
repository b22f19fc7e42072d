"""LangChain's human-in-the-loop protocol, spoken by ``CRAMiddleware``.

The interrupt values and resume answers are those of
``langchain.agents.middleware.human_in_the_loop`` (langchain 1.5), so Agent Chat UI, LangGraph
Studio and any front end written for ``HumanInTheLoopMiddleware`` render and answer them:

- batched (one interrupt per model turn): an ``HITLRequest`` — ``action_requests`` (``name``,
  ``args``, ``description``) and ``review_configs`` (``action_name``, ``allowed_decisions``) —
  answered by an ``HITLResponse``, ``{"decisions": [...]}``, one decision per request in order;
- per call: a ``ToolApprovalRequest`` (``type="tool_approval"``, ``tool_call_id``, ``name``,
  ``args``, ``description``), answered by one decision.

Answers are checked as LangGraph checks a ``response_schema`` (the interrupt carries ours,
for clients to render a form): an answer that cannot be read fails the resume with a
``pydantic.ValidationError`` (``langgraph.errors.is_invalid_resume`` is true for it) whose
text names the accepted shapes, nothing is saved, no tool runs, and the same interrupt can be
answered again — as LangChain's own middleware behaves in ``per_call`` mode.

A decision is ``{"type": "approve"}``, ``{"type": "edit", "edited_action": {"name", "args"}}``,
``{"type": "reject", "message": "..."}`` or ``{"type": "respond", "message": "..."}``. Our own
facts travel alongside, under the key ``"cra"`` of the interrupt value (a list in the batched
form, one per action request, with session, tool call, action, risk tier, policy and reason),
which LangChain's front ends ignore. Answers may add ``"approver"`` (who answered; recorded),
and the earlier answer format of this package (``{"decision": "approve" | "reject" | "edit",
"args": {...}, "approver": ..., "reason": ...}``, ``True`` / ``False``) is still read. Anything
else is refused, and the tool does not run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from langchain_core.messages import ToolMessage
from pydantic import AfterValidator, WithJsonSchema

from cra_agents import CRAError

__all__ = [
    "ALL_DECISIONS",
    "Answer",
    "ApprovalAnswerError",
    "DecisionType",
    "answer_schema",
    "answers_schema",
    "read_answer",
    "read_answers",
]

DecisionType = Literal["approve", "edit", "reject", "respond"]
#: Every decision LangChain's protocol has (``interrupt_on={tool: True}`` in its middleware).
ALL_DECISIONS: Final[tuple[DecisionType, ...]] = ("approve", "edit", "reject", "respond")

_SHAPES: Final = (
    'a HITLResponse {"decisions": [{"type": "approve"}, {"type": "edit", "edited_action": '
    '{"name": ..., "args": {...}}}, {"type": "reject", "message": ...}, {"type": "respond", '
    '"message": ...}]} with one decision per action request; for a single call also one such '
    'decision, {"decision": "approve" | "reject" | "edit", "args": {...}, "approver": ..., '
    '"reason": ...}, or true / false'
)
_LEGACY: Final[Mapping[str, DecisionType]] = {
    "approve": "approve",
    "approved": "approve",
    "accept": "approve",
    "edit": "edit",
    "reject": "reject",
    "rejected": "reject",
    "deny": "reject",
}


class ApprovalAnswerError(CRAError, ValueError):
    """A resume value ``CRAMiddleware`` cannot read as a person's decision (nothing ran).

    Raised inside the answer's validation: LangGraph reports it as the ``pydantic``
    ``ValidationError`` of the resume, whose text starts with this error's code.
    """

    default_code = "INVALID_APPROVAL_ANSWER"
    status = 400
    category = "validation"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{self.default_code}: {message}", details=details)


def _decision_json_schema(allowed: Sequence[DecisionType]) -> dict[str, Any]:
    text = {"type": "string"}
    shapes: dict[DecisionType, dict[str, Any]] = {
        "approve": {"properties": {"type": {"const": "approve"}}, "required": ["type"]},
        "edit": {
            "properties": {
                "type": {"const": "edit"},
                "edited_action": {
                    "type": "object",
                    "properties": {"name": text, "args": {"type": "object"}},
                    "required": ["name", "args"],
                },
            },
            "required": ["type", "edited_action"],
        },
        "reject": {
            "properties": {"type": {"const": "reject"}, "message": text},
            "required": ["type"],
        },
        "respond": {
            "properties": {"type": {"const": "respond"}, "message": text},
            "required": ["type", "message"],
        },
    }
    variants = [{"type": "object", **shapes[kind]} for kind in allowed]
    for variant in variants:
        variant["properties"]["approver"] = text
    return variants[0] if len(variants) == 1 else {"oneOf": variants}


def answers_schema(tools: Sequence[str], allowed: Sequence[DecisionType], approver: str) -> Any:
    """The ``response_schema`` of a batched review: an ``HITLResponse``, read on resume.

    LangGraph validates the resume value with it before saving it, and ``interrupt`` returns
    the list of :class:`Answer` (see the module docstring).
    """
    schema = {
        "type": "object",
        "properties": {
            "decisions": {
                "type": "array",
                "items": _decision_json_schema(allowed),
                "minItems": len(tools),
                "maxItems": len(tools),
            },
            "approver": {"type": "string"},
        },
        "required": ["decisions"],
    }
    return Annotated[
        Any,
        WithJsonSchema(schema),
        AfterValidator(lambda value: read_answers(value, tools, allowed, approver)),
    ]


def answer_schema(tool: str, allowed: Sequence[DecisionType], approver: str) -> Any:
    """The ``response_schema`` of one call's review: one decision, read on resume."""
    return Annotated[
        Any,
        WithJsonSchema(_decision_json_schema(allowed)),
        AfterValidator(lambda value: read_answer(value, tool, allowed, approver)),
    ]


@dataclass(frozen=True, slots=True)
class Answer:
    """One person's decision about one tool call, read from a resume value."""

    type: DecisionType
    approver: str
    #: ``reject``: the reason given; ``respond``: the answer given in the tool's place;
    #: ``approve`` / ``edit``: a note, if any.
    message: str | None = None
    #: ``edit``: the arguments to run the call with instead.
    args: Mapping[str, Any] | None = None
    #: Given in another middleware (LangChain's ``HumanInTheLoopMiddleware``), which tells
    #: the model about an edit itself.
    elsewhere: bool = False

    def as_state(self) -> dict[str, Any]:
        """The JSON form kept in the graph state until the tool call runs."""
        state: dict[str, Any] = {"type": self.type, "approver": self.approver}
        if self.message is not None:
            state["message"] = self.message
        if self.args is not None:
            state["args"] = dict(self.args)
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Answer:
        """The answer :meth:`as_state` kept."""
        args = state.get("args")
        message = state.get("message")
        return cls(
            type=state["type"],
            approver=str(state.get("approver") or "human"),
            message=message if isinstance(message, str) else None,
            args=dict(args) if isinstance(args, Mapping) else None,
        )


def read_answers(
    value: Any,
    tools: Sequence[str],
    allowed: Sequence[DecisionType],
    approver: str,
) -> list[Answer]:
    """The decisions of a batched resume value, one per tool call asked about, in order.

    Raises:
        ApprovalAnswerError: the value has no readable decision for every call, a decision
            the review config does not allow, or an edit that names another tool.
    """
    if isinstance(value, Mapping) and "decisions" in value:
        decisions = value["decisions"]
        if not isinstance(decisions, list) or len(decisions) != len(tools):
            count = len(decisions) if isinstance(decisions, list) else "no list of"
            raise ApprovalAnswerError(
                f"the resume value has {count} decisions for {len(tools)} tool calls "
                f"waiting for review; expected {_SHAPES}",
                details={"reason": "decision_count", "expected": len(tools)},
            )
        default = value.get("approver")
        fallback = default if isinstance(default, str) and default else approver
        return [
            read_answer(decision, tool, allowed, fallback)
            for decision, tool in zip(decisions, tools, strict=True)
        ]
    if len(tools) == 1:
        return [read_answer(value, tools[0], allowed, approver)]
    raise ApprovalAnswerError(
        f"cannot read the resume value {_preview(value)} as decisions for {len(tools)} tool "
        f"calls; expected {_SHAPES}",
        details={"reason": "unrecognised_answer", "expected": len(tools)},
    )


def read_answer(value: Any, tool: str, allowed: Sequence[DecisionType], approver: str) -> Answer:
    """One decision about a call of ``tool``.

    Raises:
        ApprovalAnswerError: as :func:`read_answers`.
    """
    if isinstance(value, Mapping) and "decisions" in value:
        return read_answers(value, [tool], allowed, approver)[0]
    if isinstance(value, bool):
        kind: DecisionType = "approve" if value else "reject"
        return _checked(Answer(kind, approver), tool, allowed)
    if not isinstance(value, Mapping):
        raise _unreadable(value)
    who = value.get("approver")
    approver = who if isinstance(who, str) and who else approver
    if "type" in value:  # LangChain's Decision
        kind_value = value["type"]
        if kind_value not in ALL_DECISIONS:
            raise _unreadable(value)
        message = value.get("message")
        if message is not None and not isinstance(message, str):
            raise _unreadable(value)
        args = None
        if kind_value == "edit":
            args = _edited(value.get("edited_action"), tool, value)
        elif kind_value == "respond" and message is None:
            raise ApprovalAnswerError(
                f"a 'respond' decision needs the 'message' the model gets in {tool}'s place",
                details={"reason": "respond_without_message"},
            )
        return _checked(Answer(kind_value, approver, message, args), tool, allowed)
    if "decision" in value:  # this package's earlier format
        kind = _LEGACY.get(str(value["decision"]).lower(), "reject")
        if str(value["decision"]).lower() not in _LEGACY:
            raise _unreadable(value)
        reason = value.get("reason")
        note = reason if isinstance(reason, str) and reason else None
        if kind == "edit":
            edited = value.get("args", value.get("arguments"))
            if not isinstance(edited, Mapping):
                raise _unreadable(value)
            return _checked(Answer("edit", approver, note, dict(edited)), tool, allowed)
        return _checked(Answer(kind, approver, note), tool, allowed)
    raise _unreadable(value)


def _edited(action: Any, tool: str, value: Any) -> dict[str, Any]:
    if not isinstance(action, Mapping) or not isinstance(action.get("args"), Mapping):
        raise _unreadable(value)
    name = action.get("name", tool)
    if name != tool:
        raise ApprovalAnswerError(
            f"an edit of a {tool} call names the tool {name!r}: an edit may change the "
            f"arguments, not the tool (reject the call and let the model choose another)",
            details={"reason": "edit_changes_tool", "tool": tool},
        )
    return dict(action["args"])


def _checked(answer: Answer, tool: str, allowed: Sequence[DecisionType]) -> Answer:
    if answer.type not in allowed:
        raise ApprovalAnswerError(
            f"the decision {answer.type!r} is not allowed for {tool}; allowed: "
            f"{', '.join(allowed)}",
            details={"reason": "decision_not_allowed", "allowed": list(allowed)},
        )
    return answer


def _unreadable(value: Any) -> ApprovalAnswerError:
    return ApprovalAnswerError(
        f"cannot read the resume value {_preview(value)} as a decision; expected {_SHAPES}",
        details={"reason": "unrecognised_answer"},
    )


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


# -- what the model reads ------------------------------------------------------------------


def answered_message(tool: str, call_id: str, answer: Answer) -> ToolMessage:
    """The model's ``ToolMessage`` for a call a person refused, or answered in its place.

    Worded as LangChain's ``HumanInTheLoopMiddleware`` words it, so a model prompted for one
    reads the other alike.
    """
    if answer.type == "respond":
        content = answer.message or ""
    elif answer.message:
        content = f"User rejected the tool call for `{tool}` with reason: {answer.message}"
    else:
        content = (
            f"User rejected the tool call for `{tool}` with id {call_id}. The tool was not "
            "executed. Do not retry this tool call unless the user explicitly requests it."
        )
    return ToolMessage(
        content=content,
        name=tool,
        tool_call_id=call_id,
        status="success" if answer.type == "respond" else "error",
        response_metadata={"cra_decision": answer.type, "cra_approver": answer.approver},
    )


#: Told to the model before the result of a call a person edited.
EDIT_NOTICE: Final = (
    "Note: a person reviewing this tool call changed its arguments before it ran; the call "
    "in your message is the one you produced, not the one that ran. This was intentional and "
    "authorized: do not re-issue your original call."
)


def with_edit_notice(message: ToolMessage, tool: str, args: Mapping[str, Any]) -> ToolMessage:
    """``message`` with the notice that the call ran with ``args`` instead, first."""
    notice = f"{EDIT_NOTICE} Ran instead: {tool} with arguments {json.dumps(args, default=str)}."
    content = message.content
    if isinstance(content, str):
        new: str | list[str | dict[Any, Any]] = f"{notice}\n\nTool response:\n{content}"
    elif content and all(isinstance(block, str) for block in content):
        new = [notice, *content]
    else:
        new = [{"type": "text", "text": notice}, *content]
    return message.model_copy(update={"content": new})
