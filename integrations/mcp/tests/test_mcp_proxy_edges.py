"""The proxy's edges: hostile pass-through, listings, approvals, sessions, progress, bad input."""

from __future__ import annotations

import logging
import runpy
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp.shared.exceptions import MCPError
from mcp_support import (
    ATLAS,
    MALICIOUS,
    NOTES,
    answer,
    event_types,
    in_process,
    malicious_upstream,
    notes_upstream,
    texts,
)

from cra_agents import Runtime
from cra_agents_mcp import MCPProxy, Upstream


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime([ATLAS], store="memory://", approval_timeout=10)
    yield rt
    rt.close()


def only_session(runtime: Runtime) -> str:
    (session,) = runtime.sessions()
    return session.session_id


def outcomes(runtime: Runtime, session_id: str) -> list[tuple[str, dict[str, Any]]]:
    wanted = ("action.executed", "action.failed", "action.denied")
    return [
        (e.event_type, dict(e.payload))
        for e in runtime.trace_events(session_id)
        if e.event_type in wanted
    ]


def test_bad_arguments_are_refused_at_construction(runtime: Runtime) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        Upstream.stdio([])
    with pytest.raises(ValueError, match="at least one upstream"):
        MCPProxy(runtime, [])
    assert Upstream.stdio(["server"]).name == "server"
    assert Upstream.stdio([sys.executable, "/srv/my_server.py"]).name == "my_server.py"


def test_hostile_pass_through_is_bounded(runtime: Runtime) -> None:
    """Every pass-through request of a hostile upstream ends in time with an MCP error."""
    proxy = MCPProxy(runtime, [malicious_upstream()], call_timeout=2)
    errors: dict[str, str] = {}

    async def main() -> list[str]:
        with anyio.fail_after(60):
            async with in_process(proxy) as session:
                tools = [t.name for t in (await session.list_tools()).tools]
                requests: dict[str, Any] = {
                    "resources": session.list_resources,
                    "templates": session.list_resource_templates,
                    "read": lambda: session.read_resource("note://x"),
                    "prompts": session.list_prompts,
                    "prompt": lambda: session.get_prompt("p", {}),
                }
                for name, request in requests.items():
                    with pytest.raises(MCPError) as caught:
                        await request()
                    errors[name] = caught.value.message
                silent = await session.call_tool("silent", {})
                assert silent.is_error and "did not answer silent within 2 s" in texts(silent)
                failed = await session.call_tool("rpc_error", {})
                assert failed.is_error
                assert texts(failed) == "Failed: upstream error -32000: the backend is down"
                assert texts(await session.call_tool("echo", {"text": "x"})) == "echo"
                return tools

    tools = anyio.run(main)
    # Two pages of tools/list, both listed.
    assert tools[:6] == ["huge", "enormous", "malformed", "garbage", "stray", "echo"]
    assert len(tools) == 8
    assert "not JSON-RPC" in errors["resources"] and "resources/list" in errors["resources"]
    assert "did not answer resources/templates/list within 2 s" in errors["templates"]
    assert "answered resources/read with a result the proxy cannot pass on" in errors["read"]
    assert errors["prompts"] == "prompts/list"  # the upstream's own error, untouched
    assert "cannot pass on (ValidationError)" in errors["prompt"]


def test_an_upstream_that_cannot_list_its_tools_is_down(runtime: Runtime) -> None:
    """tools/list fails: the upstream is not used; the other one serves."""
    broken = Upstream.stdio(
        [sys.executable, str(MALICIOUS)], name="no-list", env={"MALICIOUS_LIST": "error"}
    )
    proxy = MCPProxy(runtime, [broken, notes_upstream()])

    async def main() -> tuple[list[str], types.CallToolResult]:
        with anyio.fail_after(60):
            async with in_process(proxy) as session:
                tools = [t.name for t in (await session.list_tools()).tools]
                return tools, await session.call_tool("garbage", {})

    tools, garbage = anyio.run(main)
    assert "echo" in tools and "garbage" not in tools
    assert garbage.is_error and "no upstream MCP server lists a tool 'garbage'" in texts(garbage)


def test_an_upstream_that_never_answers_initialize(runtime: Runtime) -> None:
    """A server that starts but never speaks: given up after connect_timeout, stopped."""
    mute = Upstream.stdio([sys.executable, "-c", "import time; time.sleep(60)"], name="mute")
    proxy = MCPProxy(runtime, [mute, notes_upstream()], connect_timeout=4)

    async def main() -> tuple[list[str], types.CallToolResult, float]:
        with anyio.fail_after(60):
            started = time.monotonic()
            async with in_process(proxy) as session:
                took = time.monotonic() - started
                tools = [t.name for t in (await session.list_tools()).tools]
                return tools, await session.call_tool("echo", {"text": "x"}), took

    tools, echo, took = anyio.run(main)
    assert "echo" in tools and texts(echo) == "echo: x"
    assert 3.5 < took < 20  # the upstreams start together: one connect_timeout, not two


def test_a_crashed_upstream_fails_closed(runtime: Runtime) -> None:
    """The server dies during a call: recorded failed; its later calls fail, not forwarded."""
    proxy = MCPProxy(runtime, [notes_upstream()])

    async def main() -> list[types.CallToolResult]:
        with anyio.fail_after(60):
            async with in_process(proxy) as session:
                found = [
                    await session.call_tool("crash", {}),
                    await session.call_tool("echo", {"text": "x"}),
                ]
                with pytest.raises(MCPError, match="no upstream serves note://hello"):
                    await session.read_resource("note://hello")
                with pytest.raises(MCPError, match="no upstream serves the prompt summarise"):
                    await session.get_prompt("summarise", {"topic": "x"})
                return found

    crash, after = anyio.run(main)
    assert crash.is_error and "went away during crash" in texts(crash)
    assert after.is_error and "unavailable" in texts(after)
    found = outcomes(runtime, only_session(runtime))
    assert [(kind, p["action_id"]) for kind, p in found] == [
        ("action.failed", "util.crash"),
        ("action.failed", "notes.echo"),
    ]


def test_the_first_upstream_listing_a_tool_wins(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = MCPProxy(runtime, [notes_upstream(), Upstream.stdio([sys.executable, str(NOTES)])])

    async def main() -> list[str]:
        with anyio.fail_after(60):
            async with in_process(proxy) as session:
                return [t.name for t in (await session.list_tools()).tools]

    with caplog.at_level(logging.WARNING, logger="cra_agents_mcp"):
        tools = anyio.run(main)
    assert tools.count("echo") == 1
    assert "tool 'echo' of notes_server.py hidden: listed earlier" in caplog.text


def test_a_changed_tool_list_is_read_again_and_forwarded(runtime: Runtime) -> None:
    """tools/list_changed from upstream: the proxy re-lists, and tells the client."""
    proxy = MCPProxy(runtime, [notes_upstream()])
    told: list[str] = []
    changed = anyio.Event()

    async def record(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            told.append("changed")
            changed.set()

    async def main() -> list[str]:
        with anyio.fail_after(60):
            async with in_process(proxy, on_message=record) as session:
                before = [t.name for t in (await session.list_tools()).tools]
                assert "added" not in before
                await session.call_tool("add_tool", {})
                with anyio.fail_after(10):
                    await changed.wait()
                return [t.name for t in (await session.list_tools()).tools]

    assert "added" in anyio.run(main)
    assert told == ["changed"]


def test_hide_denied_hides_undeclared_tools(runtime: Runtime) -> None:
    proxy = MCPProxy(runtime, [notes_upstream()], hide_denied=True)

    async def main() -> list[str]:
        with anyio.fail_after(60):
            async with in_process(proxy) as session:
                return [t.name for t in (await session.list_tools()).tools]

    tools = anyio.run(main)
    assert "echo" in tools and "undeclared" not in tools and "delete_all" not in tools


class TestApprovalsAtTheClient:
    def test_yes_with_a_reason_long_arguments_and_calls_needing_none(
        self, runtime: Runtime
    ) -> None:
        """approve=true: runs, the reason recorded; long arguments cut; no question otherwise."""
        elicit = answer("accept", {"approve": True, "reason": "looked fine"})
        proxy = MCPProxy(runtime, [notes_upstream()])

        async def main() -> list[types.CallToolResult]:
            with anyio.fail_after(60):
                async with in_process(proxy, elicit=elicit) as session:
                    return [
                        await session.call_tool("write_note", {"name": "a", "text": "y" * 5000}),
                        await session.call_tool("echo", {"text": "no question"}),
                        await session.call_tool("undeclared", {}),
                        await session.call_tool("echo", {"text": 5}),
                    ]

        write, echo, undeclared, invalid = anyio.run(main)
        assert texts(write) == "wrote a" and texts(echo) == "echo: no question"
        assert undeclared.is_error and "not an action" in texts(undeclared)
        assert invalid.is_error and "are invalid" in texts(invalid) and "Fix them" in texts(invalid)
        assert len(elicit.asked) == 1 and "... (truncated)" in elicit.asked[0]
        session_id = only_session(runtime)
        approved = [
            e.payload for e in runtime.trace_events(session_id) if e.event_type == "action.approved"
        ]
        assert any(p.get("approval_reason") == "looked fine" for p in approved), approved

    @pytest.mark.parametrize(
        ("behaviour", "reason"),
        [("slow", "approval_timeout"), ("raise", "approval_error")],
    )
    def test_a_question_that_fails_approves_nothing(
        self, runtime: Runtime, behaviour: str, reason: str
    ) -> None:
        runtime.approval_timeout = 1
        proxy = MCPProxy(runtime, [notes_upstream()])

        async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
            if behaviour == "slow":
                await anyio.sleep(5)
            raise RuntimeError("the person's screen is off")

        async def main() -> types.CallToolResult:
            with anyio.fail_after(60):
                async with in_process(proxy, elicit=elicit) as session:
                    return await session.call_tool("write_note", {"name": "a", "text": "b"})

        result = anyio.run(main)
        assert result.is_error and "approve-writes" in texts(result)
        ((kind, payload),) = outcomes(runtime, only_session(runtime))
        assert kind == "action.denied"
        assert payload["reason"].startswith(reason), payload


class TestSessions:
    def test_a_connection_without_requests_records_no_session(self, runtime: Runtime) -> None:
        proxy = MCPProxy(runtime, [notes_upstream()])

        async def main() -> None:
            with anyio.fail_after(60):
                async with in_process(proxy):
                    pass

        anyio.run(main)
        assert runtime.sessions() == []

    def test_a_session_ended_elsewhere_fails_closed(
        self, runtime: Runtime, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The runtime's session ended under the proxy: calls refused, not forwarded."""
        proxy = MCPProxy(runtime, [notes_upstream()], agent_id="fixed-agent")

        async def main() -> tuple[types.CallToolResult, types.CallToolResult]:
            with anyio.fail_after(60):
                async with in_process(proxy) as session:
                    first = await session.call_tool("echo", {"text": "x"})
                    runtime.end_session(only_session(runtime))
                    return first, await session.call_tool("echo", {"text": "y"})

        with caplog.at_level(logging.ERROR, logger="cra_agents_mcp"):
            first, second = anyio.run(main)
        assert not first.is_error
        assert second.is_error and "Refused by cra-agents" in texts(second)
        session_id = only_session(runtime)
        assert runtime.trace_events(session_id)[0].payload["agent_id"] == "fixed-agent"
        assert event_types(runtime, session_id).count("action.executed") == 1


def test_progress_reaches_the_client(runtime: Runtime) -> None:
    proxy = MCPProxy(runtime, [notes_upstream()])
    steps: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append((progress, total, message))

    async def main() -> types.CallToolResult:
        with anyio.fail_after(60):
            async with in_process(proxy) as session:
                return await session.call_tool("slow", {"steps": 2}, progress_callback=on_progress)

    assert texts(anyio.run(main)) == "done after 2"
    assert steps == [(1.0, 2.0, "step 1"), (2.0, 2.0, "step 2")]


def test_python_dash_m_is_cra_mcp(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m cra_agents_mcp`` runs ``cra mcp``: with no command, exit 2 naming it."""
    monkeypatch.setattr(sys, "argv", ["cra_agents_mcp"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("cra_agents_mcp", run_name="__main__")
    assert exited.value.code == 2
    assert "proxy" in capsys.readouterr().err
