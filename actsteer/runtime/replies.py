"""From a row's new tokens to its ``Generation``: the text up to EOS or a stop string, why it
ended, and, for a request with tools, the calls read out of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..engine import Generation, Request
from ..tools.formats import format_for
from .generation import cut_at_stop


def decode_reply(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of reply tokens, without trailing replacement characters: the bytes of a
    multi-byte character the reply stopped in the middle of (a token cap, a cancel). Hugging
    Face's ``DecodeStream``, which vLLM's detokenizer uses, never emits those either, so local
    and served replies agree, and a stream holds them back until they complete."""
    return tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")


def until_eos(new: Sequence[int], eos: Sequence[int]) -> list[int]:
    """The tokens before the first end-of-sequence id."""
    for i, t in enumerate(new):
        if t in eos:
            return list(new[:i])
    return list(new)


def read_reply(
    tokenizer: Any,
    eos: Sequence[int],
    request: Request,
    prompt_tokens: int,
    new: Sequence[int],
    *,
    cancelled: bool,
    steering: str | None,
    closed: bool = False,
    truncated: int = 0,
) -> Generation:
    """The ``Generation`` of one row. ``closed``: its tool call was finished by the budget
    (``constrain.budget``), so it ended for ``length`` whatever token it ended on;
    ``truncated``: prompt tokens left out to fit the window."""
    options = request.options
    kept = until_eos(new, eos)
    text, hit = cut_at_stop(decode_reply(tokenizer, kept), options.stop)
    ended_on_eos = len(kept) < len(new) and new[len(kept)] in eos
    if closed or (not (hit or ended_on_eos) and len(new) >= options.max_new_tokens):
        reason = "length"
    elif hit or ended_on_eos:
        reason = "stop"
    else:
        reason = "cancelled" if cancelled else "stop"
    used = len(kept) + (1 if ended_on_eos else 0)
    calls: tuple = ()
    invalid: tuple = ()
    if request.tools and request.tool_choice != "none":  # "none": the reply is text
        text, calls, invalid = format_for(tokenizer).parse(text, request.tools)
        reason = "tool_calls" if calls and reason == "stop" else reason
    return Generation(
        text, prompt_tokens, used, reason, steering, tuple(new[:used]), calls, invalid, truncated
    )
