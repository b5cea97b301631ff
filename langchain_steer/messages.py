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
    """LangChain messages as the message dicts the model's chat template accepts: natural
    roles first; if the template rejects them (no system role, strict alternation), system text
    moves into the next user turn and same-role turns are merged. Tool calls and results keep
    their structure (``actsteer.tools.render`` writes them as the template wants)."""
    if not messages:
        raise ValueError("ChatSteer needs at least one message")
    return fit_template(sm.tokenizer, [_as_dict(m) for m in messages])


def plain_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages in OpenAI's chat shape, for a server that applies its own template
    (tool-call arguments as JSON text, as the OpenAI API carries them)."""
    if not messages:
        raise ValueError("ChatSteer needs at least one message")
    out = []
    for m in messages:
        d = _as_dict(m)
        if d.get("tool_calls"):
            d["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": json.dumps(c["function"]["arguments"]),
                    },
                }
                for c in d["tool_calls"]
            ]
        out.append(d)
    return out


def _as_dict(m: BaseMessage) -> dict[str, Any]:
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
        out: dict[str, Any] = {"role": "assistant", "content": text}
        if m.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.get("id") or f"call_{i}",
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["args"]},
                }
                for i, c in enumerate(m.tool_calls)
            ]
        return out
    if isinstance(m, ToolMessage):
        return {"role": "tool", "content": text, "tool_call_id": m.tool_call_id}
    if isinstance(m, FunctionMessage):
        return {"role": "tool", "content": text, "name": m.name}
    if isinstance(m, ChatMessage):
        return {"role": m.role, "content": text}
    raise ValueError(f"ChatSteer cannot render a {type(m).__name__}")
