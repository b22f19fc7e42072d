"""`make bench` (part 4): cost of cra-agents in LangChain, per tool call.

Cases that are compared are measured in turns (round-robin), so load from other work on the
machine falls on each alike. ``--cpu`` measures the process's CPU time (every thread: the
trace writer's work counts) instead of wall time, which other processes on a shared machine
disturb less.

- CRAMiddleware.wrap_tool_call around a tool call, against calling the same handler directly
  (the middleware's whole per-call path: session lookup, precheck, decision, frozen arguments,
  outcome record; a fresh tool_call_id every call so nothing is answered from memory);
- the same handler inside ``Runtime.call`` alone (the core's share of that overhead: what any
  shell pays; measured around the same LangChain handler, since the core call costs about
  twice as much next to a LangChain tool call as in a tight loop of its own);
- LangChain's own ``HumanInTheLoopMiddleware`` around the same handler, on a tool it does not
  gate (a yardstick for "a middleware that does nothing costly");
- guard_tool(tool).invoke against tool.invoke;
- for scale: one whole create_agent run (model turn, one tool call, final turn) without
  middleware, with CRAMiddleware and with HumanInTheLoopMiddleware.

SQLite store in ``async`` mode; the trace writer thread runs.
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, HumanInTheLoopMiddleware, ToolCallRequest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.prebuilt.tool_node import ToolRuntime

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents_langchain import CRAMiddleware, guard_tool
from cra_agents_langchain.testing import ScriptedChatModel

ATLAS = atlas_path("github-ops")
ACTIONS = {"read_file": "github.file.read"}


@tool
def read_file(repo: str, path: str) -> str:
    """Read a file of a repository."""
    return path


def _timed(
    cases: list[tuple[str, Callable[[], object]]], n: int, rounds: int = 10
) -> list[tuple[str, tuple[float, float]]]:
    """Median and p99 (µs) of each case, measured in turns.

    Each case runs ``n / rounds`` times per round, one case after the other, so a change of
    machine load (these machines are shared) falls on every case alike, not on one row.
    Between turns, untimed, the trace writer drains and a full garbage collection runs, so
    neither the writer's backlog nor a collection one case caused lands on the next case.
    """
    for _, fn in cases:
        for _ in range(min(n // 10, 500)):
            fn()
    samples: dict[str, list[int]] = {name: [] for name, _ in cases}
    clock = time.process_time_ns if "--cpu" in sys.argv else time.perf_counter_ns
    for _ in range(rounds):
        for name, fn in cases:
            cra.get_runtime().flush()
            gc.collect()
            own = samples[name]
            for _ in range(n // rounds):
                t0 = clock()
                fn()
                own.append(clock() - t0)
    rows = []
    for name, got in samples.items():
        got.sort()
        rows.append((name, (statistics.median(got) / 1000, got[int(len(got) * 0.99)] / 1000)))
    return rows


def main() -> int:
    load = os.getloadavg()
    clock = "process CPU time" if "--cpu" in sys.argv else "wall time"
    print(
        f"LangChain integration overhead ({clock}), "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    rows: list[tuple[str, tuple[float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        runtime = cra.configure(atlases=[ATLAS], store=f"sqlite://{tmp}/t.db")
        middleware = CRAMiddleware(agent_id="bench", actions=ACTIONS)
        session = runtime.create_session("bench", "benchmark")
        ids = itertools.count()
        tool_runtime: ToolRuntime[Any, Any] = ToolRuntime(
            state={},
            context=None,
            config={},
            stream_writer=lambda _: None,
            tool_call_id=None,
            store=None,
        )

        def request() -> ToolCallRequest:
            return ToolCallRequest(
                tool_call={
                    "name": "read_file",
                    "args": {"repo": "acme/app", "path": "README.md"},
                    "id": f"call-{next(ids)}",
                    "type": "tool_call",
                },
                tool=read_file,
                state={"messages": [], "cra_session_id": session.session_id},
                runtime=tool_runtime,
            )

        def handler(req: ToolCallRequest) -> ToolMessage:
            return ToolMessage(
                content=read_file.invoke(req.tool_call["args"]),
                tool_call_id=req.tool_call["id"],
            )

        def core_only() -> ToolMessage:
            req = request()
            call = runtime.call(
                "read_file",
                req.tool_call["args"],
                actions=middleware.actions,
                session_id=session.session_id,
                tool_call_id=req.tool_call["id"],
            )
            with call:
                outcome = handler(req)
                call.result = outcome.content
            return outcome

        hitl = HumanInTheLoopMiddleware(interrupt_on={"read_file": False})
        rows += _timed(
            [
                ("tool call without middleware", lambda: handler(request())),
                (
                    "tool call through CRAMiddleware",
                    lambda: middleware.wrap_tool_call(request(), handler),
                ),
                ("tool call inside Runtime.call (core)", core_only),
                (
                    "tool call through HITL middleware",
                    lambda: hitl.wrap_tool_call(request(), handler),
                ),
            ],
            10000,
        )
        args = {"repo": "acme/app", "path": "README.md"}
        guarded = guard_tool(read_file, action_id="github.file.read")
        with cra.session(agent_id="bench", goal="guard_tool"):
            rows += _timed(
                [
                    ("tool.invoke", lambda: read_file.invoke(args)),
                    ("guard_tool(tool).invoke", lambda: guarded.invoke(args)),
                ],
                5000,
            )

        # The per-run cost split: the turn's resolution (context and tool hiding) and the
        # batched review's after_model node are what CRAMiddleware adds beyond the calls.
        quiet: dict[str, Any] = {"context_budget_tokens": 0, "hide_denied_tools": False}
        runs: list[tuple[str, AgentMiddleware[Any, Any, Any] | None]] = [
            ("create_agent run", None),
            ("create_agent run, with CRAMiddleware", middleware),
            (
                "  ... without turn resolution",
                CRAMiddleware(agent_id="bench", actions=ACTIONS, **quiet),
            ),
            (
                "  ... per_call, without turn resolution",
                CRAMiddleware(
                    agent_id="bench", actions=ACTIONS, interrupt_mode="per_call", **quiet
                ),
            ),
            ("create_agent run, with HITL middleware", hitl),
        ]
        rows += _timed([(label, _agent_run(used, args)) for label, used in runs], 600, rounds=30)
        cra.shutdown()
    base = {
        "tool call through CRAMiddleware": "tool call without middleware",
        "tool call inside Runtime.call (core)": "tool call without middleware",
        "tool call through HITL middleware": "tool call without middleware",
        "guard_tool(tool).invoke": "tool.invoke",
        "create_agent run, with CRAMiddleware": "create_agent run",
        "  ... without turn resolution": "create_agent run",
        "  ... per_call, without turn resolution": "create_agent run",
        "create_agent run, with HITL middleware": "create_agent run",
    }
    medians = {name: figures[0] for name, figures in rows}
    print(f"{'measure':42} {'median µs':>10} {'p99 µs':>10} {'overhead µs':>12}")
    for name, (median, p99) in rows:
        over = f"{median - medians[base[name]]:>12.1f}" if name in base else f"{'':>12}"
        print(f"{name:42} {median:>10.1f} {p99:>10.1f} {over}")
    return 0


def _agent_run(
    middleware: AgentMiddleware[Any, Any, Any] | None, args: dict[str, Any]
) -> Callable[[], Any]:
    """One agent run: model asks for read_file, the tool runs, the model answers."""
    model = ScriptedChatModel(script=[])
    agent = create_agent(model, [read_file], middleware=[middleware] if middleware else [])
    turn = AIMessage("", tool_calls=[{"name": "read_file", "args": args, "id": "c"}])
    counter = itertools.count()

    def once() -> Any:
        # Refill the script; a fresh tool_call_id keeps the middleware from answering from memory.
        call_id = f"run-{next(counter)}"
        model.script.extend(
            [AIMessage("", tool_calls=[{**turn.tool_calls[0], "id": call_id}]), AIMessage("done")]
        )
        return agent.invoke({"messages": [HumanMessage("go")]})

    return once


if __name__ == "__main__":
    sys.exit(main())
