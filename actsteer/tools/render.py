"""Chats with tools as a chat template takes them.

A message is ``{"role", "content"}``, plus ``tool_calls`` on an assistant turn (OpenAI / Hugging
Face shape: ``{"id", "type": "function", "function": {"name", "arguments": {...}}}``) and
``tool_call_id`` / ``name`` on a ``tool`` turn. A template that supports tools gets them as they
are, with ``tools=`` (``apply_chat_template``). A template without tool support (SmolLM2) gets
the generic form: the tools block in the system turn, past calls written out in the Hermes
format, tool results as user turns in words ("get_weather returned: ...").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ToolSpecError
from .formats import ToolFormat, format_for, generic_block
from .spec import ToolSpec


def normalise_calls(calls: Any) -> list[dict[str, Any]]:
    """Assistant ``tool_calls`` in the Hugging Face shape, arguments as dicts."""
    out = []
    for call in calls or ():
        if not isinstance(call, Mapping):
            raise ToolSpecError(f"a tool call is a dict, got {call!r}")
        fn = call.get("function", call)
        name = fn.get("name")
        args = fn.get("arguments", fn.get("args", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                args = {"_raw": args}
        if not isinstance(name, str):
            raise ToolSpecError(f"a tool call needs a name, got {call!r}")
        entry = {"type": "function", "function": {"name": name, "arguments": args}}
        if call.get("id"):
            entry["id"] = str(call["id"])
        out.append(entry)
    return out


def uses_tools(messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec]) -> bool:
    """Whether a chat needs the tool-aware rendering."""
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def for_template(
    tokenizer: Any, messages: list[dict[str, Any]], tools: Sequence[ToolSpec]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and ``tools=`` argument to hand ``apply_chat_template``."""
    fmt = format_for(tokenizer)
    if fmt.native:
        return messages, [t.openai() for t in tools] or None
    return generic(messages, tools, fmt), None


def generic(
    messages: list[dict[str, Any]], tools: Sequence[ToolSpec], fmt: ToolFormat
) -> list[dict[str, Any]]:
    """A tool chat as plain system/user/assistant turns (see the module docstring)."""
    out: list[dict[str, Any]] = []
    names = {  # a tool result names its tool through its call's id
        c.get("id"): c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()
    }
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            written = [
                fmt.write(c["function"]["name"], c["function"]["arguments"])
                for c in m["tool_calls"]
            ]
            out.append(
                {"role": "assistant", "content": "\n".join(filter(None, [content, *written]))}
            )
        elif role == "tool":  # in words: a model never trained on tags echoes them
            name = m.get("name") or names.get(m.get("tool_call_id"), "The tool")
            response = f"{name} returned: {content}"
            if out and out[-1]["role"] == "user" and out[-1].get("tool_response"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + response}
            else:
                out.append({"role": "user", "content": response, "tool_response": True})
        else:
            out.append({"role": role, "content": content})
    out = [{"role": m["role"], "content": m["content"]} for m in out]
    if tools:
        block = generic_block(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}".strip()}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out
