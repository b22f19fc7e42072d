"""The governing proxy against real MCP servers, driven by a real mcp.ClientSession."""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp_support import (
    ATLAS,
    MALICIOUS,
    NOTES,
    answer,
    event_types,
    http_notes_server,
    in_process,
    malicious_upstream,
    notes_upstream,
    over_stdio,
    texts,
)

from cra_agents import ApprovalDecision, ApprovalRequest, Runtime, open_store, verify_chain
from cra_agents_mcp import MCPProxy, Upstream


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime([ATLAS], store="memory://", approval_timeout=10)
    yield rt
    rt.close()


def only_session(runtime: Runtime) -> str:
    sessions = runtime.sessions()
    assert len(sessions) == 1
    return sessions[0].session_id


def outcomes(runtime: Runtime, session_id: str) -> list[tuple[str, dict[str, Any]]]:
    wanted = ("action.executed", "action.failed", "action.denied")
    return [
        (e.event_type, dict(e.payload))
        for e in runtime.trace_events(session_id)
        if e.event_type in wanted
    ]


class TestOverStdio:
    def test_the_proxy_process_decides_records_and_forwards(self, tmp_path: Path) -> None:
        """`python -m cra_agents_mcp proxy`: allowed, denied, undeclared, approvals, crash."""
        store = tmp_path / "traces.db"
        argv = [
            sys.executable,
            "-m",
            "cra_agents_mcp",
            "proxy",
            "--atlas",
            str(ATLAS),
            "--store",
            f"sqlite://{store}",
            "--",
            sys.executable,
            str(NOTES),
        ]
        accept = answer("accept", {"approve": True, "reason": "fine by me"})
        seen: dict[str, Any] = {}

        async def main() -> None:
            with anyio.fail_after(90):
                async with over_stdio(argv, elicit=accept, name="desk-client") as session:
                    listed = await session.list_tools()
                    seen["tools"] = sorted(t.name for t in listed.tools)
                    seen["echo"] = await session.call_tool("echo", {"text": "hi"})
                    seen["delete"] = await session.call_tool("delete_all", {})
                    seen["undeclared"] = await session.call_tool("undeclared", {})
                    seen["write"] = await session.call_tool(
                        "write_note", {"name": "a", "text": "b"}
                    )
                    steps: list[float] = []

                    async def on_progress(
                        progress: float, total: float | None, message: str | None
                    ) -> None:
                        steps.append(progress)

                    seen["slow"] = await session.call_tool(
                        "slow", {"steps": 3}, progress_callback=on_progress
                    )
                    seen["progress"] = steps
                    seen["resource"] = await session.read_resource("note://hello")
                    seen["prompt"] = await session.get_prompt("summarise", {"topic": "MCP"})
                    seen["crash"] = await session.call_tool("crash", {})
                    seen["after"] = await session.call_tool("echo", {"text": "again"})
                    seen["tools_after"] = (await session.list_tools()).tools

        anyio.run(main)
        assert "echo" in seen["tools"] and "delete_all" in seen["tools"]
        assert not seen["echo"].is_error and texts(seen["echo"]) == "echo: hi"
        assert seen["delete"].is_error
        assert "deny-delete" in texts(seen["delete"]) and "never automated" in texts(seen["delete"])
        assert seen["undeclared"].is_error and "not an action" in texts(seen["undeclared"])
        assert not seen["write"].is_error and texts(seen["write"]) == "wrote a"
        assert "notes.write" in accept.asked[0] and "approve-writes" in accept.asked[0]
        assert seen["progress"] == [1.0, 2.0, 3.0]
        assert seen["resource"].contents[0].text == "world"
        assert "Summarise MCP" in seen["prompt"].messages[0].content.text
        assert seen["crash"].is_error and "went away" in texts(seen["crash"])
        assert seen["after"].is_error and "unavailable" in texts(seen["after"])
        assert seen["tools_after"] == []

        # The trace, read from the store the proxy wrote.
        read = open_store(f"sqlite://{store}")
        try:
            (session_id,) = read.sessions()
            events = read.read(session_id)
        finally:
            read.close()
        assert verify_chain(events).valid
        kinds = [e.event_type for e in events]
        assert kinds[0] == "session.started" and kinds[-1] == "session.ended"
        assert events[0].payload["agent_id"] == "desk-client"
        approved = [e for e in events if e.event_type == "action.approved"]
        assert any(e.payload.get("approver") == "mcp-client:desk-client" for e in approved)
        assert "approval.requested" in kinds
        failed = [e.payload for e in events if e.event_type == "action.failed"]
        assert [p["action_id"] for p in failed] == ["util.crash", "notes.echo"]
        denied = {e.payload["action_id"] for e in events if e.event_type == "action.denied"}
        assert "notes.delete" in denied

    def test_the_command_line_options_reach_the_proxy(self, tmp_path: Path) -> None:
        """--map, --hide-denied, --agent, --goal and --max-message-bytes, end to end."""
        store = tmp_path / "traces.db"
        tools_map = tmp_path / "tools.json"
        tools_map.write_text('{"undeclared": "notes.echo"}', encoding="utf-8")
        argv = [
            sys.executable,
            "-m",
            "cra_agents_mcp",
            "proxy",
            "--atlas",
            str(ATLAS),
            "--store",
            f"sqlite://{store}",
            "--map",
            str(tools_map),
            "--hide-denied",
            "--agent",
            "ops-agent",
            "--goal",
            "Keep notes tidy",
            "--max-message-bytes",
            "65536",
            "--stdio",
            f"{sys.executable} {MALICIOUS}",
            "--",
            sys.executable,
            str(NOTES),
        ]
        seen: dict[str, Any] = {}

        async def main() -> None:
            with anyio.fail_after(90):
                async with over_stdio(argv, name="cli-client") as session:
                    seen["tools"] = {t.name for t in (await session.list_tools()).tools}
                    seen["mapped"] = await session.call_tool("undeclared", {"text": "m"})
                    seen["enormous"] = await session.call_tool("enormous", {})

        anyio.run(main)
        assert "undeclared" in seen["tools"] and "enormous" in seen["tools"]
        assert "delete_all" not in seen["tools"]  # --hide-denied
        assert texts(seen["mapped"]) == "ran"  # --map: decided as notes.echo
        assert "more than 65536 bytes (discarded unread)" in texts(seen["enormous"])
        read = open_store(f"sqlite://{store}")
        try:
            (session_id,) = read.sessions()
            events = read.read(session_id)
        finally:
            read.close()
        assert events[0].payload["agent_id"] == "ops-agent"
        assert events[0].payload["goal"] == "Keep notes tidy"
        executed = [e.payload for e in events if e.event_type == "action.executed"]
        assert [p["action_id"] for p in executed] == ["notes.echo"]


class TestApprovals:
    @pytest.mark.parametrize(
        ("elicit", "reason"),
        [
            (answer("decline"), "approval_denied"),
            (answer("cancel"), "approval_cancelled"),
            (answer("accept", {"approve": False}), "approval_denied"),
        ],
    )
    def test_a_person_who_says_no(self, runtime: Runtime, elicit: Any, reason: str) -> None:
        """Decline, cancel, or accept with approve=false: denied, recorded, not run."""
        proxy = MCPProxy(runtime, [notes_upstream()])

        async def main() -> types.CallToolResult:
            with anyio.fail_after(60):
                async with in_process(proxy, elicit=elicit) as session:
                    return await session.call_tool("write_note", {"name": "a", "text": "b"})

        result = anyio.run(main)
        assert result.is_error and "approve-writes" in texts(result)
        session_id = only_session(runtime)
        ((kind, payload),) = outcomes(runtime, session_id)
        assert kind == "action.denied" and payload["reason"] == reason
        assert "approval.requested" in event_types(runtime, session_id)

    def test_a_client_without_elicitation_gets_the_handler(self, runtime: Runtime) -> None:
        """No elicitation capability: the runtime's handler answers (default deny, then ours)."""
        proxy = MCPProxy(runtime, [notes_upstream()])
        asked: list[ApprovalRequest] = []

        async def main() -> list[types.CallToolResult]:
            with anyio.fail_after(60):
                async with in_process(proxy, elicit=None) as session:
                    first = await session.call_tool("write_note", {"name": "a", "text": "b"})

                    def handler(request: ApprovalRequest) -> ApprovalDecision:
                        asked.append(request)
                        return ApprovalDecision(True, "ops-bot")

                    runtime.approval_handler = handler
                    second = await session.call_tool("write_note", {"name": "a", "text": "c"})
                    return [first, second]

        first, second = anyio.run(main)
        assert first.is_error and "approve-writes" in texts(first)
        assert not second.is_error and asked[0].action_id == "notes.write"
        session_id = only_session(runtime)
        kinds = [kind for kind, _ in outcomes(runtime, session_id)]
        assert kinds == ["action.denied", "action.executed"]


class TestUpstreams:
    def test_streamable_http_upstream(self, runtime: Runtime) -> None:
        """An upstream over streamable HTTP on 127.0.0.1: decided, forwarded, recorded."""
        with http_notes_server() as url:
            proxy = MCPProxy(runtime, [Upstream.http(url, name="notes-http")])

            async def main() -> tuple[types.CallToolResult, types.CallToolResult]:
                with anyio.fail_after(60):
                    async with in_process(proxy) as session:
                        ok = await session.call_tool("echo", {"text": "over http"})
                        no = await session.call_tool("delete_all", {})
                        return ok, no

            ok, no = anyio.run(main)
        assert texts(ok) == "echo: over http" and no.is_error
        kinds = [kind for kind, _ in outcomes(runtime, only_session(runtime))]
        assert kinds == ["action.executed", "action.denied"]

    def test_hostile_upstream_is_bounded(self, runtime: Runtime) -> None:
        """Huge, malformed and non-JSON answers: failed at once, recorded; the proxy serves on."""
        proxy = MCPProxy(
            runtime, [malicious_upstream()], max_result_bytes=1024 * 1024, call_timeout=60
        )
        took: dict[str, float] = {}

        async def main() -> list[types.CallToolResult]:
            with anyio.fail_after(60):
                async with in_process(proxy) as session:
                    found = []
                    for name in ("huge", "malformed", "garbage", "stray"):
                        started = time.monotonic()
                        found.append(await session.call_tool(name, {}))
                        took[name] = time.monotonic() - started
                    return [*found, await session.call_tool("echo", {"text": "x"})]

        huge, malformed, garbage, stray, echo = anyio.run(main)
        assert huge.is_error and "more than the 1048576" in texts(huge)
        assert malformed.is_error and "malformed" in texts(malformed)
        # A line that is not JSON-RPC fails the call in flight at once, not at the timeout.
        assert garbage.is_error and "not JSON-RPC" in texts(garbage)
        assert "while garbage was in flight" in texts(garbage)
        assert took["garbage"] < 10
        # Stray lines before a (late) answer: abandoned too; the late answer is dropped.
        assert stray.is_error and "not JSON-RPC" in texts(stray) and took["stray"] < 10
        assert not echo.is_error  # the upstream is still used
        session_id = only_session(runtime)
        found = outcomes(runtime, session_id)
        assert [kind for kind, _ in found] == ["action.failed"] * 4 + ["action.executed"]
        assert all("not JSON-RPC" in payload["error_message"] for _, payload in found[2:4])
        assert runtime.verify(session_id).valid

    def test_a_line_longer_than_the_cap_is_never_held(self, runtime: Runtime) -> None:
        """A 64 MiB line with a 1 MiB cap: discarded as it is read, the call failed at once."""
        proxy = MCPProxy(
            runtime,
            [malicious_upstream()],
            max_message_bytes=1024 * 1024,
            call_timeout=60,
        )

        async def main() -> list[types.CallToolResult]:
            with anyio.fail_after(60):
                async with in_process(proxy) as session:
                    tracemalloc.start()  # echo's answer follows the whole line: both count
                    try:
                        found = [
                            await session.call_tool("enormous", {}),
                            await session.call_tool("echo", {"text": "x"}),
                        ]
                        seen["peak"] = tracemalloc.get_traced_memory()[1]
                    finally:
                        tracemalloc.stop()
                    return found

        seen: dict[str, int] = {}
        enormous, echo = anyio.run(main)
        assert enormous.is_error
        assert "more than 1048576 bytes (discarded unread)" in texts(enormous)
        assert not echo.is_error
        # The SDK's reader would hold the whole line (64 MiB, and copies of it).
        assert seen["peak"] < 16 * 2**20, seen
        found = outcomes(runtime, only_session(runtime))
        assert "discarded unread" in found[0][1]["error_message"]

    def test_an_upstream_that_never_starts_fails_closed(self, runtime: Runtime) -> None:
        """A command that exits at once: its tools are not listed, calls fail, recorded."""
        broken = Upstream.stdio([sys.executable, "-c", "raise SystemExit(1)"], name="broken")
        proxy = MCPProxy(runtime, [broken, notes_upstream()], connect_timeout=20)

        async def main() -> tuple[list[str], types.CallToolResult, types.CallToolResult]:
            with anyio.fail_after(60):
                async with in_process(proxy) as session:
                    tools = [t.name for t in (await session.list_tools()).tools]
                    return (
                        tools,
                        await session.call_tool("echo", {"text": "x"}),
                        await session.call_tool("huge", {}),
                    )

        tools, echo, unknown = anyio.run(main)
        assert "echo" in tools and not echo.is_error
        assert unknown.is_error and "no upstream MCP server lists" in texts(unknown)

    def test_hide_denied_and_a_map_file_name(self, runtime: Runtime) -> None:
        """hide_denied lists only tools that may run; actions= maps the rest."""
        proxy = MCPProxy(
            runtime, [notes_upstream()], hide_denied=True, actions={"undeclared": "notes.echo"}
        )

        async def main() -> tuple[list[str], types.CallToolResult]:
            with anyio.fail_after(60):
                async with in_process(proxy) as session:
                    tools = sorted(t.name for t in (await session.list_tools()).tools)
                    return tools, await session.call_tool("undeclared", {"text": "mapped"})

        tools, mapped = anyio.run(main)
        assert "delete_all" not in tools and "undeclared" in tools and "write_note" in tools
        assert texts(mapped) == "ran"

    def test_a_cancelled_call_is_recorded_failed(self, runtime: Runtime) -> None:
        """The client gives up on a call: cancelled upstream, recorded as failed."""
        proxy = MCPProxy(runtime, [notes_upstream()])

        async def main() -> types.CallToolResult:
            with anyio.fail_after(60):
                async with in_process(proxy) as session:
                    with anyio.move_on_after(0.5):
                        await session.call_tool("sleep", {"seconds": 30})
                    return await session.call_tool("echo", {"text": "still here"})

        after = anyio.run(main)
        assert texts(after) == "echo: still here"
        session_id = only_session(runtime)
        found = outcomes(runtime, session_id)
        assert [kind for kind, _ in found] == ["action.failed", "action.executed"]
        assert found[0][1]["action_id"] == "util.sleep"

    def test_a_tool_error_result_is_recorded_failed(self, runtime: Runtime) -> None:
        """An upstream result with is_error passes through and is recorded as failed."""
        proxy = MCPProxy(runtime, [notes_upstream()])

        async def main() -> types.CallToolResult:
            with anyio.fail_after(60):
                async with in_process(proxy) as session:
                    return await session.call_tool("fails", {})

        result = anyio.run(main)
        assert result.is_error
        ((kind, payload),) = outcomes(runtime, only_session(runtime))
        assert kind == "action.failed" and payload["action_id"] == "util.fails"


class TestPassThrough:
    def test_resources_prompts_and_notifications(self, runtime: Runtime) -> None:
        """Resources and prompts untouched; an upstream's log message reaches the client."""
        proxy = MCPProxy(runtime, [notes_upstream()])
        logged: list[str] = []

        async def main() -> dict[str, Any]:
            with anyio.fail_after(60):
                async with in_process(proxy, on_message=record) as session:
                    return {
                        "resources": await session.list_resources(),
                        "templates": await session.list_resource_templates(),
                        "read": await session.read_resource("note://hello"),
                        "prompts": await session.list_prompts(),
                        "prompt": await session.get_prompt("summarise", {"topic": "x"}),
                        "shout": await session.call_tool("shout", {"text": "hey"}),
                    }

        async def record(message: Any) -> None:
            if isinstance(message, types.LoggingMessageNotification):
                logged.append(str(message.params.data))

        seen = anyio.run(main)
        assert [str(r.uri) for r in seen["resources"].resources] == ["note://hello"]
        assert seen["templates"].resource_templates == []
        assert seen["read"].contents[0].text == "world"
        assert [p.name for p in seen["prompts"].prompts] == ["summarise"]
        assert "Summarise x" in seen["prompt"].messages[0].content.text
        assert texts(seen["shout"]) == "HEY"
        assert any("shouting hey" in line for line in logged)
