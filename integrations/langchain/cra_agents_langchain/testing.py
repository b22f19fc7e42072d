"""A scripted chat model, to test guarded agents offline.

None of langchain-core's fake chat models implements ``bind_tools``, which
``langchain.agents.create_agent`` needs. :class:`ScriptedChatModel` replays a script of
``AIMessage`` objects (with tool calls) one per model call, supports ``bind_tools``, sync,
async and streaming, and can compute a reply from the conversation so far.

::

    model = ScriptedChatModel(script=[
        AIMessage("", tool_calls=[{"name": "read_file", "args": {"path": "R"}, "id": "c1"}]),
        lambda messages: AIMessage(f"The file says: {messages[-1].content}"),
    ])
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCallChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, PrivateAttr

__all__ = ["ScriptError", "ScriptStep", "ScriptedChatModel"]

#: One reply: a message, or a function of the conversation so far returning one.
ScriptStep = AIMessage | Callable[[Sequence[BaseMessage]], AIMessage]


class ScriptError(RuntimeError):
    """The model was called more often than its script has replies."""


class ScriptedChatModel(BaseChatModel):
    """Replays ``script``, one reply per call (thread-safe); ``bind_tools`` returns itself.

    Attributes:
        script: The replies, in order.
        calls: The conversations the model was called with (for assertions).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    script: list[Any]
    _position: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "cra-scripted"

    @property
    def calls(self) -> list[list[BaseMessage]]:
        """Every conversation the model has been called with."""
        return self._calls

    @property
    def remaining(self) -> int:
        """Replies not used yet."""
        return len(self.script) - self._position

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        """Tools are not needed to replay a script: the model itself."""
        return self

    def _next(self, messages: Sequence[BaseMessage]) -> AIMessage:
        with self._lock:
            if self._position >= len(self.script):
                raise ScriptError(
                    f"the script has {len(self.script)} replies and all were used; "
                    f"add one for call {self._position + 1}"
                )
            step = self.script[self._position]
            self._position += 1
            self._calls.append(list(messages))
        reply = step(messages) if callable(step) else step
        if not isinstance(reply, AIMessage):
            raise ScriptError(f"script step {self._position} gave {type(reply).__name__}")
        return reply.model_copy()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from _chunks(self._next(messages))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in _chunks(self._next(messages)):
            yield chunk


def _chunks(message: AIMessage) -> Iterator[ChatGenerationChunk]:
    """The reply as stream chunks: the text word by word, then the tool calls."""
    text = message.content if isinstance(message.content, str) else ""
    words = text.split(" ") if text else []
    for index, word in enumerate(words):
        piece = word if index == len(words) - 1 else word + " "
        yield ChatGenerationChunk(message=AIMessageChunk(content=piece, id=message.id))
    if message.tool_calls:
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                id=message.id,
                tool_call_chunks=[
                    ToolCallChunk(
                        name=call["name"],
                        args=json.dumps(call["args"]),
                        id=call.get("id"),
                        index=index,
                    )
                    for index, call in enumerate(message.tool_calls)
                ],
            )
        )
    elif not words:
        yield ChatGenerationChunk(message=AIMessageChunk(content="", id=message.id))
