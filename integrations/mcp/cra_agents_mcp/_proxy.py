"""A governing MCP proxy: an MCP server that fronts upstream MCP servers.

Every ``tools/call`` goes through the runtime's one call pipeline (``Runtime.call`` /
``gate_async``): the tool is mapped to an action, decided, recorded, and only then forwarded;
its outcome is recorded whatever happens upstream. Resources and prompts pass through.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

import anyio
import mcp.types as types
import orjson
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from cra_agents import ActionNotFoundError, ApprovalDecision, CRAError, Precheck, Runtime
from cra_agents.runtime import refusal_text
from cra_agents_mcp._common import (
    REFUSALS,
    MCPToolError,
    UpstreamError,
    error_result,
    recordable,
    result_text,
)
from cra_agents_mcp._stdio import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MessageTooLargeError,
    bounded_stdio_client,
)

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_MAX_RESULT_BYTES", "MCPProxy", "Upstream"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: The largest upstream tool result forwarded (its JSON size); a larger one is an error.
DEFAULT_MAX_RESULT_BYTES = 4 * 1024 * 1024

#: The form an approval elicitation asks the person at the client to fill in.
APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approve": {
            "type": "boolean",
            "title": "Approve this call?",
            "description": "Let the tool run with these arguments",
            "default": False,
        },
        "reason": {"type": "string", "title": "Reason", "description": "Why (recorded)"},
    },
    "required": ["approve"],
}


@dataclass(frozen=True)
class Upstream:
    """One upstream MCP server: a command run over stdio, or a streamable-HTTP URL.

    Args:
        name: How the trace and error messages name it (default: the command or URL).
        command: The server's command line (stdio), e.g. ``["python", "server.py"]``.
        url: The server's streamable-HTTP endpoint, e.g. ``http://127.0.0.1:8000/mcp``.
        env: Extra environment variables for a stdio server.
        cwd: Working directory of a stdio server.
    """

    name: str
    command: tuple[str, ...] = ()
    url: str | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None

    @classmethod
    def stdio(
        cls,
        command: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Upstream:
        """An upstream started as ``command`` and spoken to over its stdin/stdout."""
        if not command:
            raise ValueError("an upstream command must not be empty")
        label = name or os.path.basename(command[-1] if len(command) > 1 else command[0])
        return cls(name=label, command=tuple(command), env=env, cwd=cwd)

    @classmethod
    def http(cls, url: str, *, name: str | None = None) -> Upstream:
        """An upstream served over streamable HTTP at ``url``."""
        return cls(name=name or url, url=url)


@dataclass
class _Link:
    """A live connection to one upstream (or why there is none)."""

    spec: Upstream
    session: ClientSession | None = None
    dead: str | None = None
    tools: dict[str, types.Tool] = field(default_factory=dict)
    capabilities: types.ServerCapabilities | None = None
    #: Requests in flight to it, and why each was abandoned (None: it was not).
    inflight: dict[anyio.CancelScope, str | None] = field(default_factory=dict)

    def usable(self) -> ClientSession:
        """The session, or :class:`UpstreamError` saying why there is none (fail closed)."""
        if self.session is None or self.dead is not None:
            raise UpstreamError(
                f"upstream MCP server {self.spec.name!r} is unavailable "
                f"({self.dead or 'not connected'}); the call was not forwarded",
                details={"upstream": self.spec.name, "reason": "upstream_unavailable"},
            )
        return self.session


class MCPProxy:
    """An MCP server whose tool calls are decided and recorded by cra-agents, then forwarded.

    One :meth:`serve` is one client connection and one session of the runtime (agent id
    ``agent_id``, else the client's ``clientInfo.name``), ended when the connection closes.
    Upstreams are connected when :meth:`serve` starts and closed when it ends.

    - ``tools/list`` lists the upstreams' tools (with ``hide_denied``, not those the atlases
      deny outright, nor undeclared ones); ``tools/call`` maps the tool to an action (the
      runtime's one rule: ``actions``, else the action whose id, name or executor is the
      tool's name), decides it, records it and only then forwards it. A refusal is a tool
      error result naming the policy and reason, which the model reads.
    - A call needing approval asks the person at the client with ``elicitation/create``
      (action, arguments, risk tier, policy, reason); a client without elicitation gets the
      runtime's approval handler (default: deny). The answer is recorded like any other.
    - Results larger than ``max_result_bytes`` (as JSON), malformed ones, timeouts and a
      crashed upstream are recorded as failed calls and answered with a tool error; an
      upstream that crashed or closed is not used again (its later calls fail closed).
    - A stdio upstream's message (one line) longer than ``max_message_bytes`` is discarded
      as it is read, never held whole. Such a line, or one that is not JSON-RPC, fails every
      request in flight to that upstream at once (which one it answered cannot be known):
      each is recorded failed with a tool error; later calls are forwarded as usual.
    - Resources and prompts pass through; upstream notifications are forwarded; progress
      of a forwarded call reaches the client; a cancelled call is cancelled upstream and
      recorded as failed.

    Args:
        runtime: The runtime that decides and records (its store, atlases, approval handler).
        upstreams: The servers fronted, in order (a tool name listed by two: the first wins).
        agent_id: The sessions' agent id (default: the client's name, else ``mcp-client``).
        goal: The sessions' goal.
        actions: Tool name → action id, for tools the one rule does not map.
        hide_denied: Leave tools the atlases deny outright (or do not declare) out of lists.
        max_result_bytes: Largest result forwarded.
        max_message_bytes: Largest message read from a stdio upstream (one line).
        call_timeout: Seconds an upstream may take for one call.
        connect_timeout: Seconds an upstream may take to start and initialize.
        name: The proxy's server name.
        errlog: Where stdio upstreams' stderr goes (default: this process's stderr).
    """

    def __init__(
        self,
        runtime: Runtime,
        upstreams: Sequence[Upstream],
        *,
        agent_id: str | None = None,
        goal: str | None = None,
        actions: Mapping[str, str] | None = None,
        hide_denied: bool = False,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        call_timeout: float = 300.0,
        connect_timeout: float = 30.0,
        name: str = "cra-mcp-proxy",
        errlog: TextIO | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("an MCP proxy needs at least one upstream server")
        self.runtime = runtime
        self.upstreams = tuple(upstreams)
        self.agent_id = agent_id
        self.goal = (
            goal
            or "MCP tool calls through cra-agents ("
            + ", ".join(u.name for u in self.upstreams)
            + ")"
        )
        self.actions = dict(actions) if actions else None
        self.hide_denied = hide_denied
        self.max_result_bytes = max_result_bytes
        self.max_message_bytes = max_message_bytes
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.name = name
        self.errlog = errlog

    # -- serving ----------------------------------------------------------------------------

    async def serve_stdio(self) -> None:
        """Serve one client over this process's stdin/stdout (what an MCP host starts)."""
        async with stdio_server() as (read_stream, write_stream):  # pragma: no cover - a child
            await self.serve(read_stream, write_stream)

    async def serve(self, read_stream: Any, write_stream: Any) -> None:
        """Serve one client connection over a transport's stream pair, until it closes."""
        connection = _Connection(self)
        async with anyio.create_task_group() as group:
            await connection.connect(group)
            try:
                server = connection.server()
                await server.run(read_stream, write_stream, server.create_initialization_options())
            finally:
                connection.end()
                connection.stop.set()


class _Connection:
    """One client connection: its upstream links, its session, its handlers."""

    def __init__(self, proxy: MCPProxy) -> None:
        self.proxy = proxy
        self.runtime = proxy.runtime
        self.links = [_Link(spec) for spec in proxy.upstreams]
        self.stop = anyio.Event()
        self.session_id: str | None = None
        self.client: ServerSession | None = None  # the downstream side, for notifications
        self.owners: dict[str, _Link] = {}  # tool / resource uri / prompt name -> upstream
        self.approver = "mcp-client"

    # -- upstreams --------------------------------------------------------------------------

    async def connect(self, group: anyio.abc.TaskGroup) -> None:
        """Start every upstream at once (each in its own task, so one crash stays its own)."""
        starting: list[tuple[_Link, anyio.Event]] = []
        for link in self.links:
            ready = anyio.Event()
            group.start_soon(self._run_link, link, ready)
            starting.append((link, ready))
        with anyio.move_on_after(self.proxy.connect_timeout):
            for _, ready in starting:
                await ready.wait()
        for link, _ in starting:
            if link.session is None and link.dead is None:
                link.dead = f"did not start within {self.proxy.connect_timeout:g} s"
        for link in self.links:
            if link.session is not None and link.dead is None:
                await self._list_tools(link)

    async def _run_link(self, link: _Link, ready: anyio.Event) -> None:
        spec = link.spec
        try:
            async with contextlib.AsyncExitStack() as stack:
                if spec.url is not None:
                    streams = await stack.enter_async_context(streamable_http_client(spec.url))
                else:
                    params = StdioServerParameters(
                        command=spec.command[0],
                        args=list(spec.command[1:]),
                        env=dict(spec.env) if spec.env else None,
                        cwd=spec.cwd,
                    )
                    errlog = self.proxy.errlog or sys.stderr
                    streams = await stack.enter_async_context(
                        bounded_stdio_client(params, errlog, self.proxy.max_message_bytes)
                    )
                session = await stack.enter_async_context(
                    ClientSession(streams[0], streams[1], message_handler=self._forwarder(link))
                )
                with anyio.fail_after(self.proxy.connect_timeout):
                    init = await session.initialize()
                link.capabilities = init.capabilities
                link.session = session
                ready.set()
                await self.stop.wait()
        except Exception as exc:  # noqa: BLE001 - an upstream that fails is down, not the proxy
            link.dead = link.dead or _why(exc)
            logger.warning("upstream MCP server %s failed: %s", spec.name, link.dead)
        finally:
            link.dead = link.dead or "closed"
            link.session = None
            ready.set()

    def _forwarder(self, link: _Link) -> Any:
        async def forward(message: IncomingMessage) -> None:
            if isinstance(message, Exception):  # a line that is no message: abandon requests
                self._fault(link, message)
                return
            if isinstance(message, types.ToolListChangedNotification):
                await self._list_tools(link)
            client = self.client
            if client is None or isinstance(message, types.ProgressNotification):
                return  # progress reaches the client through its call's callback
            try:
                await client.send_notification(message)
            except Exception:
                logger.debug("forwarding %s failed", type(message).__name__, exc_info=True)

        return forward

    async def _list_tools(self, link: _Link) -> None:
        try:
            session = link.usable()
            tools: dict[str, types.Tool] = {}
            cursor: str | None = None
            while True:
                with anyio.fail_after(self.proxy.call_timeout), self._watch(link, "tools/list"):
                    listed = await session.list_tools(
                        params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    )
                tools.update((tool.name, tool) for tool in listed.tools)
                cursor = listed.next_cursor
                if not cursor:
                    break
            link.tools = tools
        except Exception as exc:  # noqa: BLE001 - a server that cannot list is down
            self._down(link, exc)

    def _fault(self, link: _Link, exc: Exception) -> None:
        """The upstream's stream carried a line that is no message: fail what is in flight.

        Which request the line answered cannot be known, so every request in flight to that
        upstream is abandoned at once (each says why); later requests are sent as usual.
        """
        if isinstance(exc, MessageTooLargeError):
            why = f"sent {exc}"
        else:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            why = f"wrote a line that is not JSON-RPC ({type(exc).__name__}: {first})"
        logger.warning("upstream MCP server %s %s", link.spec.name, why)
        for scope in link.inflight:
            if link.inflight[scope] is None:
                link.inflight[scope] = why
                scope.cancel()

    @contextlib.contextmanager
    def _watch(self, link: _Link, what: str) -> Iterator[None]:
        """Abandon the request at once, with :class:`UpstreamError`, if the stream breaks."""
        scope = anyio.CancelScope()
        link.inflight[scope] = None
        try:
            with scope:
                yield
        finally:
            why = link.inflight.pop(scope)
        if why is not None:
            raise UpstreamError(
                f"upstream MCP server {link.spec.name!r} {why} while {what} was in flight; "
                "the request was abandoned (whether the tool ran is unknown)",
                code="MCP_UPSTREAM_BROKEN_STREAM",
                details={"upstream": link.spec.name, "request": what},
            )

    async def _ask(
        self, link: _Link, what: str, request: Callable[[ClientSession], Awaitable[T]]
    ) -> T:
        """A pass-through request to ``link``, bounded in time; its faults as MCP errors.

        The upstream's own MCP errors pass through as they are.
        """
        try:
            with anyio.fail_after(self.proxy.call_timeout), self._watch(link, what):
                return await request(link.usable())
        except MCPError:
            raise
        except UpstreamError as error:
            raise MCPError(types.INTERNAL_ERROR, error.message) from error
        except TimeoutError:
            raise MCPError(
                types.INTERNAL_ERROR,
                f"upstream MCP server {link.spec.name!r} did not answer {what} within "
                f"{self.proxy.call_timeout:g} s",
            ) from None
        except Exception as exc:  # malformed, or a result the proxy cannot relay
            raise MCPError(
                types.INTERNAL_ERROR,
                f"upstream MCP server {link.spec.name!r} answered {what} with a result the "
                f"proxy cannot pass on ({type(exc).__name__})",
            ) from exc

    def _down(self, link: _Link, exc: BaseException) -> None:
        if link.dead is None:
            link.dead = _why(exc)
            logger.warning("upstream MCP server %s is down: %s", link.spec.name, link.dead)

    def _owner(self, tool: str) -> _Link | None:
        for link in self.links:
            if tool in link.tools:
                return link
        return None

    # -- the session ------------------------------------------------------------------------

    def _session(self, ctx: ServerRequestContext[Any, Any]) -> str:
        self.client = ctx.session
        if self.session_id is None:
            params = ctx.session.client_params
            info = params.client_info if params is not None else None
            agent = self.proxy.agent_id or (info.name if info is not None else "") or "mcp-client"
            self.approver = f"mcp-client:{info.name if info is not None else agent}"
            metadata: dict[str, Any] = {
                "mcp.upstreams": [link.spec.name for link in self.links],
            }
            if info is not None:
                metadata["mcp.client"] = {"name": info.name, "version": info.version}
            created = self.runtime.create_session(agent, self.proxy.goal, metadata=metadata)
            self.session_id = created.session_id
        return self.session_id

    def end(self) -> None:
        """End the connection's session (the client went away)."""
        if self.session_id is None:
            return
        try:
            self.runtime.end_session(self.session_id)
        except CRAError:
            logger.exception("ending the MCP client's session failed")

    # -- handlers ---------------------------------------------------------------------------

    def server(self) -> Server[Any]:
        """The low-level MCP server whose handlers forward to the upstreams."""
        return Server(
            self.proxy.name,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
        )

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        """Every upstream's tools (first name wins); with ``hide_denied``, those allowed."""
        session_id = self._session(ctx)
        seen: dict[str, types.Tool] = {}
        for link in self.links:
            if link.dead is not None:
                continue
            for name, tool in link.tools.items():
                if name in seen:
                    logger.warning("tool %r of %s hidden: listed earlier", name, link.spec.name)
                    continue
                if self.proxy.hide_denied and self._denied_outright(session_id, name):
                    continue
                seen[name] = tool
        return types.ListToolsResult(tools=list(seen.values()))

    def _denied_outright(self, session_id: str, tool: str) -> bool:
        try:
            action_id = self.runtime.map_tool(tool, actions=self.proxy.actions)
            answer = self.runtime.precheck(session_id, action_id, {}, check_parameters=False)
        except CRAError:
            return True  # undeclared (or ambiguous): every call of it is denied
        return answer.result == "deny"

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """Decide, record, forward, record the outcome (see :class:`MCPProxy`)."""
        runtime = self.runtime
        tool = params.name
        arguments: dict[str, Any] = dict(params.arguments or {})
        call_id = None if ctx.request_id is None else f"mcp:{ctx.request_id}"
        try:
            session_id = self._session(ctx)
            approval = await self._approval(ctx, session_id, tool, arguments, call_id)
            call = runtime.call(
                tool,
                arguments,
                actions=self.proxy.actions,
                session_id=session_id,
                tool_call_id=call_id,
                approval=approval,
            )
            await runtime.gate_async(call)
        except REFUSALS as error:
            return error_result(refusal_text(error))
        except CRAError as error:  # the trace cannot record, the session ended: fail closed
            return error_result(refusal_text(error))
        async with call:
            try:
                result = await self._forward(ctx, tool, call.arguments)
            except UpstreamError as error:
                call.fail(error)
                return error_result(f"Failed: {error.message}")
            if result.is_error:
                call.fail(MCPToolError(result_text(result)))
            else:
                call.result = recordable(result)
            return result

    async def _approval(
        self,
        ctx: ServerRequestContext[Any, Any],
        session_id: str,
        tool: str,
        arguments: Mapping[str, Any],
        call_id: str | None,
    ) -> ApprovalDecision | None:
        """Ask the person at the client (elicitation) when the call needs approval.

        None: no approval is needed, the runtime is in shadow mode, or the client cannot be
        asked: the gate then asks the runtime's approval handler (default: deny).
        """
        runtime = self.runtime
        if runtime.shadow or not _can_elicit(ctx.session):
            return None
        try:
            action_id = runtime.map_tool(tool, actions=self.proxy.actions)
        except ActionNotFoundError:
            return None  # the gate refuses it, recorded
        precheck = runtime.precheck(session_id, action_id, arguments, check_parameters=False)
        if not precheck.needs_approval:
            return None
        runtime.record_approval_request(session_id, precheck, arguments, tool_call_id=call_id)
        return await self._elicit(ctx, tool, arguments, precheck)

    async def _elicit(
        self,
        ctx: ServerRequestContext[Any, Any],
        tool: str,
        arguments: Mapping[str, Any],
        precheck: Precheck,
    ) -> ApprovalDecision:
        shown = orjson.dumps(dict(arguments), option=orjson.OPT_INDENT_2, default=repr).decode()
        if len(shown) > 4000:
            shown = shown[:4000] + "\n... (truncated)"
        message = (
            f"Approval needed: tool {tool} performs {precheck.action_id} "
            f"(risk {precheck.risk_tier}).\n"
            f"Policy {precheck.policy_id}: {precheck.reason or 'requires human approval'}\n"
            f"Arguments:\n{shown}"
        )
        approver = self.approver
        try:
            with anyio.fail_after(self.runtime.approval_timeout):
                answer = await ctx.session.elicit_form(
                    message, APPROVAL_SCHEMA, related_request_id=ctx.request_id
                )
        except TimeoutError:
            return ApprovalDecision(False, approver, "approval_timeout")
        except Exception as exc:  # noqa: BLE001 - a failed question approves nothing
            return ApprovalDecision(False, approver, f"approval_error: {exc}")
        if answer.action == "cancel":
            return ApprovalDecision(False, approver, "approval_cancelled")
        if answer.action == "decline":
            return ApprovalDecision(False, approver, "declined at the MCP client")
        content = answer.content or {}
        said = content.get("reason")
        reason = said if isinstance(said, str) and said else None
        if content.get("approve") is True:
            return ApprovalDecision(True, approver, reason or "approved at the MCP client")
        return ApprovalDecision(False, approver, reason or "not approved at the MCP client")

    async def _forward(
        self, ctx: ServerRequestContext[Any, Any], tool: str, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        """Forward an allowed call to the upstream that lists ``tool``; bound its answer."""
        link = self._owner(tool)
        if link is None:
            raise UpstreamError(
                f"no upstream MCP server lists a tool {tool!r}",
                code="MCP_UNKNOWN_TOOL",
                details={"tool": tool},
            )
        session = link.usable()
        progress = _progress_forwarder(ctx)
        try:
            with anyio.fail_after(self.proxy.call_timeout), self._watch(link, tool):
                result = await session.call_tool(tool, arguments, progress_callback=progress)
        except UpstreamError:
            raise
        except TimeoutError:
            raise UpstreamError(
                f"upstream MCP server {link.spec.name!r} did not answer {tool} within "
                f"{self.proxy.call_timeout:g} s",
                code="MCP_UPSTREAM_TIMEOUT",
                details={"upstream": link.spec.name, "tool": tool},
            ) from None
        except MCPError as exc:
            # The SDK's own word that the transport ended; the same code sent by the server
            # (-32000 opens JSON-RPC's range of server errors) is the server's error.
            if exc.code == types.CONNECTION_CLOSED and exc.message == "Connection closed":
                self._down(link, exc)
                raise UpstreamError(
                    f"upstream MCP server {link.spec.name!r} went away during {tool} "
                    f"({exc.message}); later calls to it fail",
                    details={"upstream": link.spec.name, "tool": tool},
                ) from exc
            return error_result(f"Failed: upstream error {exc.code}: {exc.message}")
        except Exception as exc:
            raise UpstreamError(
                f"upstream MCP server {link.spec.name!r} answered {tool} with a malformed "
                f"result ({type(exc).__name__})",
                code="MCP_MALFORMED_RESULT",
                details={"upstream": link.spec.name, "tool": tool},
            ) from exc
        if not isinstance(result, types.CallToolResult):
            raise UpstreamError(
                f"upstream MCP server {link.spec.name!r} answered {tool} with a "
                f"{type(result).__name__}, not a tool result",
                code="MCP_MALFORMED_RESULT",
                details={"upstream": link.spec.name, "tool": tool},
            )
        size = len(result.model_dump_json(by_alias=True, exclude_none=True))
        if size > self.proxy.max_result_bytes:
            raise UpstreamError(
                f"the result of {tool} from {link.spec.name!r} is {size} bytes, more than the "
                f"{self.proxy.max_result_bytes} the proxy forwards",
                code="MCP_RESULT_TOO_LARGE",
                details={"upstream": link.spec.name, "tool": tool, "size": size},
            )
        return result

    # -- pass-through -----------------------------------------------------------------------

    def _serving(self, kind: str) -> list[_Link]:
        return [
            link
            for link in self.links
            if link.session is not None
            and link.dead is None
            and link.capabilities is not None
            and getattr(link.capabilities, kind) is not None
        ]

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        """The upstreams' resources, untouched."""
        self.client = ctx.session
        found: list[types.Resource] = []
        for link in self._serving("resources"):
            listed = await self._ask(link, "resources/list", lambda s: s.list_resources())
            for resource in listed.resources:
                self.owners.setdefault(f"resource:{resource.uri}", link)
            found.extend(listed.resources)
        return types.ListResourcesResult(resources=found)

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        """The upstreams' resource templates, untouched."""
        found: list[types.ResourceTemplate] = []
        for link in self._serving("resources"):
            listed = await self._ask(
                link, "resources/templates/list", lambda s: s.list_resource_templates()
            )
            found.extend(listed.resource_templates)
        return types.ListResourceTemplatesResult(resource_templates=found)

    def _listed_by(self, capability: str, key: str, what: str) -> _Link:
        """The upstream that listed ``key``, else the first serving ``capability``.

        Raises:
            MCPError: no upstream serves it (``INVALID_PARAMS``).
        """
        link = self.owners.get(key)
        if link is None:
            serving = self._serving(capability)
            if not serving:
                raise MCPError(types.INVALID_PARAMS, f"no upstream serves {what}")
            link = serving[0]
        return link

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        """Read a resource from the upstream that listed it (else the first with resources)."""
        link = self._listed_by("resources", f"resource:{params.uri}", str(params.uri))
        return await self._ask(link, "resources/read", lambda s: s.read_resource(params.uri))

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        """The upstreams' prompts, untouched."""
        found: list[types.Prompt] = []
        for link in self._serving("prompts"):
            listed = await self._ask(link, "prompts/list", lambda s: s.list_prompts())
            for prompt in listed.prompts:
                self.owners.setdefault(f"prompt:{prompt.name}", link)
            found.extend(listed.prompts)
        return types.ListPromptsResult(prompts=found)

    async def get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        """Get a prompt from the upstream that listed it (else the first with prompts)."""
        link = self._listed_by("prompts", f"prompt:{params.name}", f"the prompt {params.name}")
        return await self._ask(
            link, "prompts/get", lambda s: s.get_prompt(params.name, params.arguments)
        )


def _why(exc: BaseException) -> str:
    """What went wrong, from the innermost exception of a task group's group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _can_elicit(session: ServerSession) -> bool:
    """Whether the client declared form elicitation (and can be sent a request now)."""
    wanted = types.ClientCapabilities(elicitation=types.ElicitationCapability())
    try:
        return session.can_send_request and session.check_client_capability(wanted)
    except Exception:  # noqa: BLE001 - a client we cannot read is one we cannot ask
        return False


def _progress_forwarder(ctx: ServerRequestContext[Any, Any]) -> Any:
    """A progress callback relaying an upstream's progress to the client, if it asked."""
    meta: Mapping[str, Any] = ctx.meta or {}
    if meta.get("progress_token") is None and meta.get("progressToken") is None:
        return None

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        with contextlib.suppress(Exception):  # progress is best effort
            await ctx.session.report_progress(progress, total, message)

    return relay
