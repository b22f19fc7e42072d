"""``guard_tool``: a LangChain tool gated by cra-agents, for use outside ``create_agent``."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, get_args, get_origin, get_type_hints

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from langchain_core.tools.base import (
    _get_runnable_config_param,
    _is_injected_arg_type,
    get_all_basemodel_annotations,
)
from langgraph.prebuilt import InjectedState, InjectedStore
from langgraph.prebuilt.tool_node import ToolRuntime
from pydantic import ConfigDict, PrivateAttr

from cra_agents import Call, CRAError, Runtime
from cra_agents.guard import call_session
from cra_agents.runtime import refusal_text
from cra_agents_langchain._common import REFUSALS

__all__ = ["DROPPED_EVENT", "GuardedTool", "ToolDeniedError", "guard_tool", "guard_tools"]

_CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("cra_tool_call", default=None)
# Injected arguments a model-shaped ToolCall carried, dropped before LangChain parses it.
_DROPPED: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "cra_tool_dropped", default=()
)
#: The extension event recording them, in the call's session.
DROPPED_EVENT = "langchain.tool.injected_args_dropped"


class ToolDeniedError(ToolException):
    """cra-agents refused the call: the tool did not run. The message says why."""

    def __init__(self, error: CRAError) -> None:
        super().__init__(refusal_text(error))
        self.error = error


def _handle(error: ToolException) -> str:
    if isinstance(error, ToolDeniedError):
        return str(error)
    raise error  # the wrapped tool's own ToolException, as it would have surfaced


def _error_handler(tool: BaseTool) -> Any:
    """The guarded tool's ``handle_tool_error``: a refusal is always the model's to read.

    The wrapped tool's own handler still answers for its own errors. One that re-raises every
    exception it does not know (langchain-mcp-adapters' does) would otherwise turn a refusal
    into an exception that ends the agent's run.
    """
    own = tool.handle_tool_error
    if not own:
        return _handle
    if own is True:
        return True  # LangChain answers with the message: the refusal's text

    def handle(error: ToolException) -> Any:
        if isinstance(error, ToolDeniedError):
            return str(error)
        return own(error) if callable(own) else own

    return handle


class GuardedTool(BaseTool):
    """A tool whose every call is decided and recorded by cra-agents before it runs.

    Same name, description and argument schema as the wrapped tool; injected arguments
    (``ToolRuntime``, ``InjectedToolCallId``, ``InjectedState``, ``InjectedStore``,
    ``InjectedToolArg``) still reach it and are kept out of the decision. A refused call raises
    :class:`ToolDeniedError`, which ``handle_tool_error`` turns into the tool's output so the
    model reads the reason.

    A value for an injected argument inside a ``ToolCall``'s ``args`` is the model's, not
    LangChain's: it is dropped, as LangGraph's ``ToolNode`` drops it, and LangChain injects
    the real one (the call id from the ``ToolCall``; state, store and runtime from
    ``ToolNode``). So it never reaches the tool undecided. Inside a LangGraph run the values
    ``ToolNode`` itself injects (``InjectedState``, ``InjectedStore``, ``ToolRuntime``) are
    kept, since it has already replaced the model's; any other injected key in a
    ``ToolCall`` (``InjectedToolCallId``, a plain ``InjectedToolArg``) is dropped everywhere,
    as ``ToolNode`` never passes one. Each drop is recorded in the call's session as a
    ``langchain.tool.injected_args_dropped`` event (tool, ``tool_call_id``, argument names).
    A plain ``dict`` input is the caller's own and is passed as given.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tool: BaseTool
    #: The action, when named; else the tool's name is mapped by the runtime's one rule.
    action_id: str | None = None
    actions: dict[str, str] | None = None
    cra_runtime: Any = None
    _visible: frozenset[str] | None = PrivateAttr(default=None)
    _optional: frozenset[str] | None = PrivateAttr(default=None)
    _injected: tuple[frozenset[str], frozenset[str]] | None = PrivateAttr(default=None)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run the tool (keeps the ``tool_call_id`` of a ``ToolCall`` input for the record)."""
        input, dropped = self._strip(input, config)
        token = _CALL_ID.set(_call_id(input))
        dropped_token = _DROPPED.set(dropped)
        try:
            return super().invoke(input, config, **kwargs)
        finally:
            _DROPPED.reset(dropped_token)
            _CALL_ID.reset(token)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async :meth:`invoke`."""
        input, dropped = self._strip(input, config)
        token = _CALL_ID.set(_call_id(input))
        dropped_token = _DROPPED.set(dropped)
        try:
            return await super().ainvoke(input, config, **kwargs)
        finally:
            _DROPPED.reset(dropped_token)
            _CALL_ID.reset(token)

    def _strip(self, input: Any, config: RunnableConfig | None) -> tuple[Any, tuple[str, ...]]:
        """A ``ToolCall`` without the model's values for injected arguments (see above)."""
        if not (isinstance(input, Mapping) and input.get("type") == "tool_call"):
            return input, ()
        args = input.get("args")
        if not isinstance(args, Mapping) or not args:
            return input, ()
        injected = self._injected
        if injected is None:
            injected = self._injected = _injected_keys(self.tool)
        every, graph_filled = injected
        if not every.intersection(args):
            return input, ()
        # ToolNode strips the model's values and injects its own (state, store, runtime):
        # https://github.com/langchain-ai/langgraph/blob/prebuilt%3D%3D1.1.3/libs/prebuilt/langgraph/prebuilt/tool_node.py#L1473-L1481
        configurable = (config or {}).get("configurable") or {}
        in_graph = "__pregel_runtime" in configurable
        keep = graph_filled if in_graph else frozenset()
        dropped = tuple(sorted(k for k in args if k in every and k not in keep))
        if not dropped:
            return input, ()
        return {**input, "args": {k: v for k, v in args.items() if k not in dropped}}, dropped

    def _runtime(self) -> Runtime:
        runtime: Runtime | None = self.cra_runtime
        return runtime if runtime is not None else call_session()[0]

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Model-visible arguments (decided on) and injected ones (passed through)."""
        visible = self._visible
        if visible is None:  # tool_call_schema builds a model on every access: once is enough
            visible = self._visible = frozenset(_fields(self.tool.tool_call_schema))
        # LangChain fills in the schema's defaults; a None default the model left out is not
        # an argument (the gate's rule for every adapter: see cra.guarded).
        optional = self._optional
        if optional is None:
            optional = self._optional = frozenset(_none_defaults(self.tool.tool_call_schema))
        decided = {
            k: v for k, v in kwargs.items() if k in visible and not (v is None and k in optional)
        }
        injected = {k: v for k, v in kwargs.items() if k not in visible}
        return decided, injected

    def _call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Runtime, Call, dict[str, Any]]:
        """The call through the gate (the one session and mapping rules), not yet decided."""
        if args:
            kwargs = {**_positional(self.tool, args), **kwargs}
        decided, injected = self._split(kwargs)
        runtime = self._runtime()
        call_id = _CALL_ID.get()
        call = runtime.call(
            self.tool.name,
            decided,
            action_id=self.action_id,
            actions=self.actions,
            tool_call_id=call_id,
        )
        dropped = _DROPPED.get()
        if dropped:  # recorded beside the call's decision, in its session (fails closed)
            payload: dict[str, Any] = {"tool": self.tool.name, "arguments": list(dropped)}
            if call_id is not None:
                payload["tool_call_id"] = call_id
            runtime.record_event(call.session_id, DROPPED_EVENT, payload)
        return runtime, call, injected

    def _run(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: CallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> Any:
        runtime, call, injected = self._call(args, kwargs)
        try:
            runtime.gate_sync(call)  # a refusal raises here, recorded
        except REFUSALS as error:
            raise ToolDeniedError(error) from error
        with call:
            extra = _extras(self.tool._run, config, run_manager)
            result = self.tool._run(**call.arguments, **injected, **extra)
            call.result = _recordable(result)
        return result

    async def _arun(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> Any:
        runtime, call, injected = self._call(args, kwargs)
        try:
            await runtime.gate_async(call)
        except REFUSALS as error:
            raise ToolDeniedError(error) from error
        async with call:
            extra = _extras(self.tool._arun, config, run_manager)
            result = await self.tool._arun(**call.arguments, **injected, **extra)
            call.result = _recordable(result)
        return result


def guard_tool(
    tool: BaseTool,
    *,
    action_id: str | None = None,
    runtime: Runtime | None = None,
    actions: Mapping[str, str] | None = None,
) -> GuardedTool:
    """Wrap ``tool`` so each call is decided (CARP) and recorded (TRACE) first.

    Every call goes through ``Runtime.call``: the action is ``action_id``, else
    ``actions[tool.name]``, else the action whose id, name or executor equals the tool's name
    (the runtime's one mapping rule, at call time: an unmapped tool is refused and recorded).
    Calls belong to the active ``cra.session`` (the runtime's one session rule), and get spans
    like every other call when the runtime has ``otel=``.
    """
    handler = _error_handler(tool)
    return GuardedTool(
        tool=tool,
        action_id=action_id,
        actions=dict(actions) if actions else None,
        cra_runtime=runtime,
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        return_direct=tool.return_direct,
        response_format=tool.response_format,
        handle_tool_error=handler,
        handle_validation_error=tool.handle_validation_error,
        metadata=tool.metadata,
        tags=tool.tags,
    )


def guard_tools(
    tools: Iterable[BaseTool],
    *,
    runtime: Runtime | None = None,
    actions: Mapping[str, str] | None = None,
) -> list[GuardedTool]:
    """:func:`guard_tool` for each tool."""
    return [guard_tool(tool, runtime=runtime, actions=actions) for tool in tools]


def _call_id(value: Any) -> str | None:
    if isinstance(value, Mapping) and value.get("type") == "tool_call":
        call_id = value.get("id")
        return str(call_id) if call_id else None
    return None


def _injected_keys(tool: BaseTool) -> tuple[frozenset[str], frozenset[str]]:
    """The tool's injected arguments, and those of them a ``ToolNode`` fills itself.

    The same reading as ``ToolNode``'s ``_get_all_injected_args``: the input schema's
    annotations, then the function's.
    """
    annotations: dict[str, Any] = {}
    func = getattr(tool, "func", None) or getattr(tool, "coroutine", None)
    if func is not None:
        with contextlib.suppress(Exception):  # unresolvable hints: the schema decides
            annotations.update(get_type_hints(func, include_extras=True))
    schema = tool.get_input_schema()
    if isinstance(schema, type):
        annotations.update(get_all_basemodel_annotations(schema))
    every = {name for name, type_ in annotations.items() if _is_injected_arg_type(type_)}
    every |= tool._injected_args_keys
    filled = {
        name
        for name in every
        if name == "runtime"
        or _marks(annotations.get(name), InjectedState, InjectedStore)
        or _marks(annotations.get(name), ToolRuntime)
    }
    return frozenset(every), frozenset(filled)


def _marks(type_: Any, *kinds: type) -> bool:
    """Whether ``type_`` is one of ``kinds`` or ``Annotated`` with an instance of one."""
    if type_ is None:
        return False
    candidates = [type_, get_origin(type_), *get_args(type_)]
    return any(
        (isinstance(c, type) and issubclass(c, kinds)) or isinstance(c, kinds) for c in candidates
    )


def _fields(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        return list(schema.get("properties", {}))
    return list(getattr(schema, "model_fields", {}))


def _none_defaults(schema: Any) -> list[str]:
    """The fields of a tool's schema that default to None (optional, not required)."""
    if isinstance(schema, dict):
        required = set(schema.get("required", ()))
        return [
            name
            for name, spec in schema.get("properties", {}).items()
            if name not in required and isinstance(spec, dict) and spec.get("default", None) is None
        ]
    return [
        name
        for name, field in getattr(schema, "model_fields", {}).items()
        if not field.is_required() and field.default is None
    ]


def _positional(tool: BaseTool, args: tuple[Any, ...]) -> dict[str, Any]:
    names = list(_fields(tool.args_schema)) if tool.args_schema is not None else ["tool_input"]
    return dict(zip(names, args, strict=False))


@functools.lru_cache(maxsize=1024)
def _extra_names(func: Any) -> tuple[bool, str | None]:
    return "run_manager" in inspect.signature(func).parameters, _get_runnable_config_param(func)


def _extras(func: Any, config: RunnableConfig, run_manager: Any) -> dict[str, Any]:
    """The ``run_manager`` / config keywords the wrapped tool's method takes (as BaseTool.run)."""
    wants_manager, config_param = _extra_names(getattr(func, "__func__", func))
    extra: dict[str, Any] = {}
    if wants_manager:
        extra["run_manager"] = run_manager
    if config_param:
        extra[config_param] = config
    return extra


def _recordable(result: Any) -> Any:
    """What to digest of a tool's result: its content, else the result (the gate copes)."""
    try:
        content = getattr(result, "content", result)
    except Exception:  # noqa: BLE001 - a hostile property: digest the object itself
        return result
    return content if isinstance(content, str | int | float | bool | list | dict) else result
