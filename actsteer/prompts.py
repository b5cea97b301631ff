"""Prompts as the model receives them: a raw completion string as is, chat messages through the
tokenizer's chat template (generation prompt appended), and their token ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import ContextWindowError, PromptError, ToolSpecError
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
        fix = "shorten the prompt (e.g. langchain_core.messages.trim_messages)"
    else:
        fix = f"lower max_new_tokens to {window - prompt_tokens} or shorten the prompt"
    raise ContextWindowError(f"the request does not fit the context window: {what}; {fix}")


def check_budget(max_new_tokens: int, window: int | None) -> None:
    """Refuse, before any prompt, a ``max_new_tokens`` that leaves no room for one."""
    if window is not None and max_new_tokens >= window:
        raise ContextWindowError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
            f"context window of {window} tokens; lower it below {window}"
        )


def left_pad(
    encoded: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows as one left-padded batch: ``(input_ids, attention_mask)``."""
    width = max(len(t) for t in encoded)
    ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width - len(tokens) :] = 1
    return ids.to(device), mask.to(device)


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
