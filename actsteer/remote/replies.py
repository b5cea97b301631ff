"""A vLLM server's replies as ``Generation`` values: whole replies and streams (``Said``), the
tool calls vLLM's parser read (or, for a cut-off call, read here as the local engine reads it),
and the prompt tokens a truncation left out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..engine import Generation, Request
from ..prompts import Fitted
from ..tools import wire
from ..tools.formats import HERMES, ToolFormat


class Said:
    """What a stream has said so far: its text, finish reason and usage."""

    def __init__(self, fmt: ToolFormat = HERMES) -> None:
        self.text, self.finish, self.usage = "", None, None
        self.calls, self.fmt = wire.CallPieces(), fmt

    def add(self, chunk: Any) -> str:
        """Take in one SSE chunk; returns its new text."""
        self.usage = chunk.usage or self.usage
        if not chunk.choices:
            return ""
        choice = chunk.choices[0]
        delta = getattr(choice, "delta", None)
        piece = getattr(delta, "content", None) or getattr(choice, "text", "") or ""
        self.calls.add(getattr(delta, "tool_calls", None))
        self.finish = choice.finish_reason or self.finish
        self.text += piece
        return piece

    def generation(self, request: Request) -> Generation:
        calls = self.calls.whole()
        return generation(request, self.text, self.finish, self.usage, (), calls, self.fmt)


def noted(generation: Generation, fitted: Fitted | None) -> Generation:
    """``generation`` with the prompt tokens its truncation left out."""
    if fitted is None or not fitted.dropped_tokens:
        return generation
    return dataclasses.replace(generation, truncated_tokens=fitted.dropped_tokens)


def whole(reply: Any) -> tuple[str, str | None]:
    choice = reply.choices[0]
    message = getattr(choice, "message", None)
    text = message.content if message is not None else choice.text
    return text or "", choice.finish_reason


def calls_of(reply: Any) -> list[Any]:
    """The tool calls vLLM's tool parser read from a reply."""
    message = getattr(reply.choices[0], "message", None)
    return list(getattr(message, "tool_calls", None) or ())


def token_ids(reply: Any) -> tuple[int, ...]:
    """The generated ids vLLM returns with ``return_token_ids`` (empty if it did not)."""
    choice = reply.choices[0]
    ids = getattr(choice, "token_ids", None)
    if ids is None and getattr(choice, "model_extra", None):
        ids = choice.model_extra.get("token_ids")
    return tuple(int(t) for t in ids or ())


def generation(
    request: Request,
    text: str,
    finish: str | None,
    usage: Any,
    ids: tuple[int, ...] = (),
    raw_calls: Sequence[Any] = (),
    fmt: ToolFormat = HERMES,
) -> Generation:
    calls, invalid = wire.read_calls(raw_calls, request.tools)
    if request.tools and request.tool_choice != "none" and not raw_calls and fmt.trigger in text:
        # vLLM's parser gives up on a reply with a cut-off call: read it as the local engine
        text, calls, invalid = fmt.parse(text, request.tools)
    reason = finish if finish in ("stop", "length", "cancelled") else "stop"
    if calls and reason == "stop":
        reason = "tool_calls"
    described = " + ".join(s.describe() for s in request.steering if not s.is_zero) or None
    return Generation(
        text.strip() if raw_calls else text,
        int(getattr(usage, "prompt_tokens", 0) or 0),
        int(getattr(usage, "completion_tokens", 0) or 0),
        reason,  # type: ignore[arg-type]
        described,
        ids,
        calls,
        invalid,
    )
