"""LangChain messages as the ``{"role", "content"}`` dicts a model's chat template reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from actsteer import SteeredModel
from actsteer.prompts import Prompt, fit_template

_MULTIMODAL = {"image", "image_url", "audio", "input_audio", "video", "file"}


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
    return fit_template(sm.tokenizer, chat)


def plain_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as role/content dicts, for a server that applies its own template."""
    if not messages:
        raise ValueError("ChatSteer needs at least one message")
    return [_as_dict(m, tool_role=False) for m in messages]


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
