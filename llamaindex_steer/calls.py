"""How one LlamaIndex call maps to one engine ``Request``: the accepted call options, steering
printing (without a model), chat messages as engine prompts (tool calls and tool results
included), the model's context window, and the LlamaIndex responses built from the engine's
output, with the applied steering in ``raw`` and ``additional_kwargs`` and any tool calls as
``ToolCallBlock`` blocks of the message."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    ContentBlock,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW

from actsteer import Generation, SteeredModel
from actsteer.engine import Request

_ROLES = {"developer": "system", "chatbot": "assistant", "model": "assistant", "function": "tool"}


def model_context_window(sm: SteeredModel) -> int:
    """The model's context length from its config (``max_position_embeddings`` and kin), else
    the tokenizer's ``model_max_length`` when that is a real limit, else LlamaIndex's default."""
    config = sm.model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(sm.tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return DEFAULT_CONTEXT_WINDOW


def has_chat_template(sm: SteeredModel) -> bool:
    """Whether the model is a chat model for LlamaIndex: its tokenizer has a chat template."""
    return bool(getattr(sm.tokenizer, "chat_template", None))


def as_engine_message(message: ChatMessage, plain: bool = False) -> dict[str, Any]:
    """A LlamaIndex message as the dict the chat template reads: ``{"role", "content"}``, plus
    ``tool_calls`` for an assistant's calls (``ToolCallBlock`` blocks, or OpenAI-shaped
    ``additional_kwargs["tool_calls"]`` from older integrations) and ``tool_call_id`` / ``name``
    for a tool result. Roles other templates may not know are mapped (developer -> system,
    chatbot/model -> assistant, function -> tool). ``plain``: call arguments as JSON text, as
    an OpenAI-compatible server takes them."""
    texts, calls = [], []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            calls.append(_call(block.tool_call_id, block.tool_name, block.tool_kwargs, plain))
        else:
            raise ValueError(f"SteerLLM reads text only; got a {type(block).__name__}")
    role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
    role = _ROLES.get(role, role)
    out: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
    extra = message.additional_kwargs
    if role == "assistant" and not calls:
        for c in extra.get("tool_calls") or ():
            c = c.model_dump() if hasattr(c, "model_dump") else c
            fn = c.get("function") or {}
            calls.append(_call(c.get("id"), fn.get("name"), fn.get("arguments"), plain))
    if calls:
        out["tool_calls"] = calls
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if extra.get(key):
                out[key] = str(extra[key])
    return out


def _call(call_id: str | None, name: Any, arguments: Any, plain: bool) -> dict[str, Any]:
    """One past call in the Hugging Face / OpenAI shape."""
    if isinstance(arguments, str) and not plain:
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass  # kept as text: actsteer writes it back as it was
    elif plain and not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id:
        out["id"] = call_id
    return out


def reply_message(text: str, generation: Generation | None = None) -> ChatMessage:
    """The assistant message of a response: its text, and the finished generation's calls as
    ``ToolCallBlock`` blocks (arguments as dicts); calls that could not be used are listed in
    ``additional_kwargs["invalid_tool_calls"]`` (name, arguments as text, error, id)."""
    if generation is None or not (generation.tool_calls or generation.invalid_tool_calls):
        return ChatMessage(role=MessageRole.ASSISTANT, content=text)
    blocks: list[ContentBlock] = [TextBlock(text=text)] if text else []
    blocks += [
        ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments))
        for c in generation.tool_calls
    ]
    extra: dict[str, Any] = {}
    if generation.invalid_tool_calls:
        extra["invalid_tool_calls"] = [
            {"name": c.name, "arguments": c.arguments, "error": c.error, "id": c.id}
            for c in generation.invalid_tool_calls
        ]
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def arguments_of(kwargs: dict[str, Any] | str) -> dict[str, Any]:
    """A ``ToolCallBlock``'s arguments as a dict (text that is no JSON object gives {})."""
    if isinstance(kwargs, Mapping):
        return dict(kwargs)
    try:
        value = json.loads(kwargs) if kwargs.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def response(
    request: Request,
    chat: bool,
    text: str,
    delta: str | None = None,
    generation: Generation | None = None,
) -> Any:
    """A ``ChatResponse`` (``chat``) or ``CompletionResponse`` whose ``raw`` and
    ``additional_kwargs`` carry the applied steering and, for a finished ``Generation``, token
    usage and finish reason in the shape LlamaIndex's token counters read (``raw["usage"]``)."""
    info = request.info()
    raw: dict[str, Any] = {"steering": info}
    extra: dict[str, Any] = {"steering": info}
    if generation is not None:
        g = generation
        usage = {
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens,
        }
        raw.update(usage=usage, finish_reason=g.finish_reason)
        extra.update(usage, finish_reason=g.finish_reason)
        if g.truncated_tokens:  # the prompt was cut to fit the window (truncate=)
            raw["truncated_tokens"] = extra["truncated_tokens"] = g.truncated_tokens
    if chat:
        message = reply_message(text, generation)
        return ChatResponse(message=message, delta=delta, raw=raw, additional_kwargs=extra)
    return CompletionResponse(text=text, delta=delta, raw=raw, additional_kwargs=extra)


def responses(request: Request, chat: bool, items: Iterator[str | Generation]) -> Iterator[Any]:
    """Streamed responses: each with its ``delta`` and the full ``text`` so far, then a last one
    with an empty delta that carries the usage and finish reason (the end event's response)."""
    text = ""
    for item in items:
        if isinstance(item, Generation):
            yield response(request, chat, text, "", item)
        else:
            text += item
            yield response(request, chat, text, item)


async def aresponses(
    request: Request, chat: bool, items: AsyncIterator[str | Generation]
) -> AsyncIterator[Any]:
    """``responses`` for async streams."""
    text = ""
    async for item in items:
        if isinstance(item, Generation):
            yield response(request, chat, text, "", item)
        else:
            text += item
            yield response(request, chat, text, item)
