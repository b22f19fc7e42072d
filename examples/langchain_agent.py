"""`make demo` (part 2): a GitHub-ops LangChain agent under cra-agents, offline.

A real ``langchain.agents.create_agent`` loop with a scripted model (no API key, no network):
one allowed call, one denied call, one call that needs approval (answered here as a reviewer
would, through the LangGraph interrupt), then the session's trace, verified.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents_langchain import CRAMiddleware
from cra_agents_langchain.testing import ScriptedChatModel

ATLAS = atlas_path("github-ops")
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"


@tool
def read_file(repo: str, path: str) -> str:
    """Read a file from a repository."""
    return f"# {repo}\nSee CONTRIBUTING.md before merging."


@tool
def delete_repo(repo: str, confirm_name: str) -> str:
    """Delete a repository (irreversible)."""
    return f"deleted {repo}"


@tool
def merge_pr(repo: str, pr_number: int, expected_head_sha: str) -> str:
    """Merge a pull request."""
    return f"merged {repo}#{pr_number}"


def _call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id}


SCRIPT = [
    AIMessage(
        "Let me look at the repository first.",
        tool_calls=[_call("read_file", "call_read", repo="acme/app", path="README.md")],
    ),
    AIMessage(
        "The old repo can go.",
        tool_calls=[_call("delete_repo", "call_delete", repo="acme/app", confirm_name="acme/app")],
    ),
    AIMessage(
        "Deleting is not allowed; I will merge the ready pull request instead.",
        tool_calls=[
            _call("merge_pr", "call_merge", repo="acme/app", pr_number=42, expected_head_sha=SHA)
        ],
    ),
    AIMessage("PR #42 is merged; the repository stays."),
]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cra.configure(atlases=[ATLAS], store=f"sqlite://{tmp}/traces.db")
        agent = create_agent(
            ScriptedChatModel(script=SCRIPT),
            [read_file, delete_repo, merge_pr],
            middleware=[
                CRAMiddleware(
                    agent_id="github-ops-agent",
                    actions={
                        "read_file": "github.file.read",
                        "delete_repo": "github.repo.delete",
                        "merge_pr": "github.pr.merge",
                    },
                )
            ],
            checkpointer=InMemorySaver(),
        )
        config: Any = {"configurable": {"thread_id": "demo"}}
        print("LangChain agent under cra-agents (scripted model, offline)\n")
        result = agent.invoke({"messages": [HumanMessage("Tidy up acme/app")]}, config)
        for pending in result.get("__interrupt__", []):
            # LangChain's HITLRequest (what Agent Chat UI renders), our facts beside it.
            ask = pending.value
            for request, facts in zip(ask["action_requests"], ask["cra"], strict=True):
                print(
                    f"approval needed: {facts['action_id']} {request['args']} "
                    f"(risk {facts['risk_tier']}, {facts['policy_id']}: {facts['reason']})"
                )
            print("  reviewer alice approves\n")
            # LangChain's HITLResponse, plus who answered (recorded as the approver).
            decisions = [{"type": "approve"} for _ in ask["action_requests"]]
            result = agent.invoke(
                Command(resume={"decisions": decisions, "approver": "alice"}), config
            )
        for message in result["messages"]:
            if isinstance(message, ToolMessage):
                status = "DENIED " if message.status == "error" else "ran    "
                print(f"  tool {status} {message.name}: {str(message.content).splitlines()[0]}")
            elif isinstance(message, AIMessage) and message.content:
                print(f"  model: {message.content}")
        runtime = cra.get_runtime()
        runtime.flush()
        (session,) = runtime.sessions()
        print(f"\ntrace of session {session.session_id} ({session.agent_id}: {session.goal!r})")
        for event in runtime.trace_events(session.session_id):
            payload = event.payload
            detail = " ".join(
                f"{key}={payload[key]}"
                for key in ("action_id", "policy_id", "reason", "approver", "tool_call_id")
                if key in payload
            )
            print(f"  {event.sequence:>2} {event.event_type:<18} {detail}")
        verification = runtime.verify(session.session_id)
        print(
            f"chain {'VALID' if verification.valid else 'INVALID'}: "
            f"{verification.event_count} events, head {verification.last_valid_hash[:16]}…"
        )
        cra.shutdown()
        return 0 if verification.valid else 1


if __name__ == "__main__":
    sys.exit(main())
