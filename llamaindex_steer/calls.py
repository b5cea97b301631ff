"""How one LlamaIndex call maps to one engine ``Request``: the accepted call options, steering
printing (without a model), chat messages as engine prompts, the model's context window, and
the LlamaIndex responses built from the engine's output, with the applied steering in ``raw``
and ``additional_kwargs``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
    TextBlock,
)
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW

from actsteer import Generation, SteeredModel, Steering, SteeringVector
from actsteer.engine import Request

STEERING_OPTIONS = ("steering", "steering_coeff", "steering_positions", "extra_steering")
#: Call kwargs SteerLLM understands; anything else is a typo and raises ``TypeError``.
CALL_OPTIONS = frozenset(
    {*STEERING_OPTIONS, "max_new_tokens", "max_tokens", "temperature", "top_p", "stop", "seed"}
)
_ROLES = {"developer": "system", "chatbot": "assistant", "model": "assistant"}


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


def describe(spec: Any) -> str | None:
    """A printable form of a steering spec, without a model: expressions as written, vectors
    and ``Steering`` values through ``Steering.describe``."""
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, SteeringVector):
        return Steering(spec).describe()
    if isinstance(spec, Steering):
        return spec.describe()
    parts = [describe(s) for s in spec]
    return " + ".join(p for p in parts if p) or None


def has_chat_template(sm: SteeredModel) -> bool:
    """Whether the model is a chat model for LlamaIndex: its tokenizer has a chat template."""
    return bool(getattr(sm.tokenizer, "chat_template", None))


def as_engine_message(message: ChatMessage) -> dict[str, str]:
    """A LlamaIndex message as the ``{"role", "content"}`` dict the chat template reads; roles
    other templates may not know are mapped (developer -> system, chatbot/model -> assistant)."""
    texts = []
    for block in message.blocks:
        if not isinstance(block, TextBlock):
            raise ValueError(f"SteerLLM reads text only; got a {type(block).__name__}")
        texts.append(block.text)
    role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
    return {"role": _ROLES.get(role, role), "content": "\n".join(texts)}


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
    if chat:
        message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
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
