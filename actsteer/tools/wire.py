"""Tools and calls in OpenAI's wire shape, for an OpenAI-compatible server (``RemoteEngine``).

Outbound: chat messages with ``tool_calls`` (arguments as JSON text, as the API takes them) and
``tool`` turns,. Inbound: a reply's ``message.tool_calls`` (or a
stream's ``delta.tool_calls`` pieces, put together by index) as ``ToolCall`` values, and calls
that name no bound tool or carry unparseable arguments as ``InvalidToolCall``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .spec import InvalidToolCall, ToolCall, ToolSpec, new_call_id


def openai_message(m: Any) -> dict[str, Any]:
    """One prompt message as the chat completions API takes it."""
    if not isinstance(m, Mapping):
        return {"role": m[0], "content": m[1]}
    out: dict[str, Any] = {k: v for k, v in m.items() if k != "tool_calls"}
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": c.get("id") or new_call_id(),
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": _text(c["function"].get("arguments", {})),
                },
            }
            for c in m["tool_calls"]
        ]
    return out


def read_calls(
    raw: Sequence[Any] | None, tools: Sequence[ToolSpec]
) -> tuple[tuple[ToolCall, ...], tuple[InvalidToolCall, ...]]:
    """A reply's calls (OpenAI ``tool_calls`` objects or dicts) as well-formed and invalid ones."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    names = {t.name for t in tools}
    for call in raw or ():
        fn = _get(call, "function")
        name, text = _get(fn, "name"), _get(fn, "arguments") or ""
        call_id = _get(call, "id") or new_call_id()
        text = text if isinstance(text, str) else _text(text)
        try:
            args = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            invalid.append(InvalidToolCall(name, text, f"not valid JSON ({exc})", call_id))
            continue
        if name not in names:
            why = f"no bound tool is named {name!r}"
        elif not isinstance(args, dict):
            why = "the arguments are not a JSON object"
        else:
            calls.append(ToolCall(name, args, call_id))
            continue
        invalid.append(InvalidToolCall(name, text, why, call_id))
    return tuple(calls), tuple(invalid)


class CallPieces:
    """A stream's ``delta.tool_calls`` pieces, joined per call index."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, pieces: Sequence[Any] | None) -> None:
        for piece in pieces or ():
            index = _get(piece, "index") or 0
            entry = self.calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = _get(piece, "id") or entry["id"]
            fn = _get(piece, "function")
            if fn is not None:
                entry["name"] += _get(fn, "name") or ""
                entry["arguments"] += _get(fn, "arguments") or ""

    def whole(self) -> list[dict[str, Any]]:
        """The calls as ``read_calls`` takes them."""
        return [
            {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(self.calls.items())
        ]


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _text(args: Any) -> str:
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
