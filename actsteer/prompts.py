"""Prompts as the model receives them: a raw completion string as is, chat messages through the
tokenizer's chat template (generation prompt appended), and their token ids."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ContextWindowError, OptionsError, PromptError, ToolSpecError
from .tools import render as tool_render
from .tools.spec import ToolSpec

Prompt = str | Sequence[Mapping[str, Any]] | Sequence[tuple[str, str]]
"""A raw completion string, or chat messages (``{"role", "content"}`` dicts or pairs; an
assistant turn may carry ``tool_calls``, a ``tool`` turn ``tool_call_id`` and ``name``)."""


def render(tokenizer: Any, prompt: Prompt, tools: Sequence[ToolSpec] = ()) -> str:
    """The exact text sent to the model for ``prompt`` (with ``tools`` offered to the model
    through its chat template, or actsteer's generic tools block: ``actsteer.tools.render``)."""
    if isinstance(prompt, str):
        if tools:
            raise ToolSpecError("tools need chat messages, not a raw completion string")
        return prompt
    messages = [_message(m) for m in prompt]
    if not messages:
        raise PromptError("an empty message list cannot be sent to the model")
    if tool_render.uses_tools(messages, tools):
        chat, offered = tool_render.for_template(tokenizer, messages, tools)
        try:
            return _apply(tokenizer, chat, offered)
        except Exception:
            if offered is not None:
                raise
            return _apply(tokenizer, _portable(chat), None)  # the generic form, portable
    return _apply(tokenizer, messages, None)


def _apply(tokenizer: Any, messages: list[dict[str, Any]], tools: list | None) -> str:
    if getattr(tokenizer, "chat_template", None):
        extra = {"tools": tools} if tools else {}
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **extra
        )
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + "assistant:"


def fit_template(tokenizer: Any, chat: list[dict[str, str]]) -> list[dict[str, str]]:
    """``chat`` if the chat template accepts it, else its portable form (Gemma- and
    Mistral-style templates refuse a system role or demand strict user/assistant turns): system
    text moves into the next user turn and same-role turns merge. Frameworks add system
    messages of their own (LlamaIndex's QA prompts, ``system_prompt``)."""
    try:
        render(tokenizer, chat)
        return chat
    except Exception:  # the template refused this shape; retry with the portable one
        portable = _portable(chat)
        render(tokenizer, portable)
        return portable


def encode(tokenizer: Any, prompt: Prompt, tools: Sequence[ToolSpec] = ()) -> list[int]:
    """Token ids of ``prompt``, exactly as a generate call sends them (special tokens only for
    raw strings: a chat template writes its own)."""
    text = render(tokenizer, prompt, tools)
    ids = tokenizer(text, add_special_tokens=isinstance(prompt, str))
    ids = list(ids["input_ids"])
    if not ids:
        raise PromptError("the prompt encodes to zero tokens")
    return ids


def context_window(config: Any, tokenizer: Any) -> int | None:
    """The longest sequence the model takes: its ``max_position_embeddings`` (GPT-2's
    ``n_positions``), else the tokenizer's ``model_max_length`` where that is a real limit."""
    n = getattr(config, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**9 else None


def check_window(prompt_tokens: int, max_new_tokens: int, window: int | None) -> None:
    """Refuse a prompt that, with ``max_new_tokens`` after it, does not fit ``window``: past
    it a model generates garbage (transformers only warns), and OpenAI answers
    ``context_length_exceeded``."""
    if window is None or prompt_tokens + max_new_tokens <= window:
        return
    what = f"prompt is {prompt_tokens} tokens, max_new_tokens {max_new_tokens}, window {window}"
    if prompt_tokens >= window:
        fix = (
            "shorten the prompt (e.g. langchain_core.messages.trim_messages) or pass "
            "truncate='drop_oldest_messages' (chats) or truncate='left'"
        )
    else:
        fix = f"lower max_new_tokens to {window - prompt_tokens} or shorten the prompt"
    raise ContextWindowError(f"the request does not fit the context window: {what}; {fix}")


Truncate = Literal["left", "drop_oldest_messages"]
#: What ``truncate=`` accepts: keep a prompt's last tokens (vLLM's ``truncate_prompt_tokens``,
#: tokenizers' ``truncation_side="left"``), or drop a chat's oldest turns whole.
TRUNCATE: tuple[str, ...] = ("left", "drop_oldest_messages")


def check_truncate(truncate: Any, prompt: Prompt | None = None) -> Truncate | None:
    """``truncate`` if it is None or one of ``TRUNCATE`` (and, for a chat-only mode, the
    prompt is a chat), else ``OptionsError``."""
    if truncate is not None and truncate not in TRUNCATE:
        raise OptionsError(f"truncate must be None or one of {list(TRUNCATE)}, got {truncate!r}")
    if truncate == "drop_oldest_messages" and isinstance(prompt, str):
        raise OptionsError(
            "truncate='drop_oldest_messages' needs chat messages; a raw completion string "
            "can only be cut with truncate='left'"
        )
    return truncate


@dataclass(frozen=True)
class Fitted:
    """A prompt made to fit the window: what is sent, its token ids, and what was left out."""

    prompt: Prompt
    ids: list[int]
    dropped_tokens: int = 0
    """Tokens of the original prompt that are not sent."""
    dropped_messages: int = 0


def fit(
    prompt: Prompt,
    tokenize: Callable[[Prompt], list[int]],
    max_new_tokens: int,
    window: int | None,
    truncate: Truncate | None = None,
) -> Fitted:
    """``prompt`` as it fits ``window`` with ``max_new_tokens`` after it. Without ``truncate``
    a prompt that does not fit is a ``ContextWindowError``; ``"left"`` keeps its last tokens;
    ``"drop_oldest_messages"`` keeps the system turns and the newest turns from a user turn on
    (so no tool result loses its call), as many as fit (found by bisection: few re-encodes)."""
    ids = tokenize(prompt)
    if window is None or len(ids) + max_new_tokens <= window or truncate is None:
        check_window(len(ids), max_new_tokens, window)
        return Fitted(prompt, ids)
    check_budget(max_new_tokens, window)
    room = window - max_new_tokens
    if truncate == "left":
        return Fitted(prompt, ids[len(ids) - room :], len(ids) - room)
    check_truncate(truncate, prompt)
    chat = list(prompt)  # the caller's own message values: they are sent as they came
    roles = [_message(m)["role"] for m in chat]
    starts = [i for i, role in enumerate(roles) if role == "user" and i > 0]
    lo, hi, best = 0, len(starts) - 1, None
    while lo <= hi:  # the earliest user turn from which the chat fits
        mid = (lo + hi) // 2
        kept = _from_turn(chat, roles, starts[mid])
        kept_ids = tokenize(kept)
        if len(kept_ids) <= room:
            best, hi = (kept, kept_ids), mid - 1
        else:
            lo = mid + 1
    if best is None:
        last = _from_turn(chat, roles, starts[-1]) if starts else chat
        n = len(tokenize(last))
        raise ContextWindowError(
            "the request does not fit the context window even with only the system turns and "
            f"the last user turn ({n} tokens, max_new_tokens {max_new_tokens}, window {window}); "
            "shorten that turn or lower max_new_tokens"
        )
    kept, kept_ids = best
    return Fitted(kept, kept_ids, len(ids) - len(kept_ids), len(chat) - len(kept))


def _from_turn(chat: list[Any], roles: list[str], start: int) -> list[Any]:
    """The system turns before ``start``, then every turn from ``start`` on."""
    return [m for m, role in zip(chat[:start], roles) if role == "system"] + chat[start:]


def check_budget(max_new_tokens: int, window: int | None) -> None:
    """Refuse, before any prompt, a ``max_new_tokens`` that leaves no room for one."""
    if window is not None and max_new_tokens >= window:
        raise ContextWindowError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
            f"context window of {window} tokens; lower it below {window}"
        )


def _message(m: object) -> dict[str, Any]:
    if isinstance(m, Mapping) and "role" in m and "content" in m:
        out: dict[str, Any] = {"role": str(m["role"]), "content": str(m["content"] or "")}
        if m.get("tool_calls"):
            out["tool_calls"] = tool_render.normalise_calls(m["tool_calls"])
        for key in ("tool_call_id", "name"):
            if m.get(key) and out["role"] == "tool":
                out[key] = str(m[key])
        return out
    if isinstance(m, tuple) and len(m) == 2:
        return {"role": str(m[0]), "content": str(m[1])}
    raise PromptError(f"a message must be {{'role', 'content'}} or (role, content), got {m!r}")


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
