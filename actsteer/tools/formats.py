"""How a model writes tool calls: one ``ToolFormat`` per family of chat templates.

A format knows the text a call is written as, so it can (1) build the structural-tag grammar
that makes calls well formed (forced: only calls; auto: free text, and whatever follows the
trigger is a complete call of a bound tool) and (2) parse a reply back into content, calls and
invalid calls. ``format_for`` picks the format from the chat template:

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen2.5/3, Hermes,
  and actsteer's generic tools block for templates without tool support, e.g. SmolLM2);
- ``llama``: a bare ``{"name": ..., "parameters": {...}}`` object (Llama 3.1+ JSON tool calling);
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]`` (parsed; a forced choice is
  refused: ``[TOOL_CALLS]`` is a special token a text grammar cannot emit).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..constrain.spec import Constraint
from ..errors import ToolSpecError
from .spec import InvalidToolCall, ToolCall, ToolSpec

Parsed = tuple[str, tuple[ToolCall, ...], tuple[InvalidToolCall, ...]]
"""A reply as content (the text outside calls), well-formed calls and invalid ones."""


@dataclass(frozen=True)
class ToolFormat:
    """One way of writing tool calls."""

    name: str
    trigger: str
    """Text that starts a call: a stream holds text back from here."""
    begin: str
    """A call's text before its arguments, ``{name}`` standing for the tool's name."""
    end: str
    native: bool = True
    """Whether the model's own template renders the tools (``apply_chat_template(tools=)``);
    False: actsteer's generic tools block goes into the system turn."""

    def constraint(
        self, tools: Sequence[ToolSpec], choice: str, parallel: bool | None = None
    ) -> Constraint | None:
        """The grammar for a reply under ``choice`` (None for ``"none"``). ``parallel=None``
        allows several calls under ``"auto"`` and one under a forced choice (a small model told
        it must call keeps calling until ``max_new_tokens``); a named choice is one call."""
        if choice == "none" or not tools:
            return None
        if self.name == "mistral" and choice != "auto":
            raise ToolSpecError(
                "a forced tool_choice is not supported for Mistral's [TOOL_CALLS] format: it is "
                "a special token that a text grammar cannot emit; use tool_choice='auto'"
            )
        chosen = [t for t in tools if choice in ("auto", "required") or t.name == choice]
        tags = [
            {
                "type": "tag",
                "begin": self.begin.replace("{name}", t.name),
                "content": {
                    "type": "json_schema",
                    "json_schema": t.parameters,
                    "max_whitespace_cnt": 1,  # ", " and ": ", never runs of newlines
                },
                "end": self.end,
            }
            for t in chosen
        ]
        single = choice not in ("auto", "required") or (
            not parallel if parallel is not None else choice != "auto"
        )
        if choice == "auto":
            body: dict[str, Any] = {
                "type": "triggered_tags",
                "triggers": [self.trigger],
                "tags": tags,
                "stop_after_first": single,
            }
        else:
            body = {
                "type": "tags_with_separator",
                "tags": tags,
                "separator": "\n",
                "at_least_one": True,
                "stop_after_first": single,
            }
        return Constraint.structural_tag({"type": "structural_tag", "format": body})

    def write(self, name: str, arguments: dict[str, Any]) -> str:
        """A call as this format writes it (for replaying past calls in a generic block)."""
        args = json.dumps(arguments, ensure_ascii=False)
        return self.begin.replace("{name}", name) + args + self.end

    def parse(self, text: str, tools: Sequence[ToolSpec]) -> Parsed:
        """Content, calls and invalid calls of a reply; never raises."""
        if self.name == "llama":
            return _parse_llama(text, tools)
        if self.name == "mistral":
            return _parse_mistral(text, tools)
        return _parse_hermes(text, tools)


HERMES = ToolFormat(
    "hermes", "<tool_call>", '<tool_call>\n{"name": "{name}", "arguments": ', "}\n</tool_call>"
)
GENERIC = ToolFormat("hermes", HERMES.trigger, HERMES.begin, HERMES.end, native=False)
LLAMA = ToolFormat("llama", '{"name": ', '{"name": "{name}", "parameters": ', "}")
MISTRAL = ToolFormat(
    "mistral", "[TOOL_CALLS]", '[TOOL_CALLS][{"name": "{name}", "arguments": ', "}]"
)


def format_for(tokenizer: Any) -> ToolFormat:
    """The tool-call format a tokenizer's chat template uses."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one, or the tool_use one
        template = template.get("tool_use") or template.get("default")
    if not isinstance(template, str) or "tools" not in template:
        return GENERIC
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in template or "ipython" in template:
        return LLAMA
    return HERMES


def generic_block(tools: Sequence[ToolSpec]) -> str:
    """actsteer's tools block for templates without tool support (Hermes' wording and format)."""
    listed = "\n".join(json.dumps(t.openai(), ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def shown_content(text: str, trigger: str) -> str:
    """The part of a partial reply that is surely content, for a stream: the text before the
    first call's trigger (or before a tail that may start one), stripped as parsed content is."""
    cut = text.find(trigger)
    if cut < 0:
        hold = next((k for k in range(len(trigger) - 1, 0, -1) if text.endswith(trigger[:k])), 0)
        cut = len(text) - hold
    return text[:cut].strip()


# -- parsers ------------------------------------------------------------------------------------
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _parse_hermes(text: str, tools: Sequence[ToolSpec]) -> Parsed:
    if "<tool_call>" not in text:
        return text.strip(), (), ()
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for m in _HERMES_CALL.finditer(text):
        closed = m.group(0).rstrip().endswith("</tool_call>")
        _one(m.group(1), "arguments", tools, calls, invalid, cut=not closed)
    content = _HERMES_CALL.sub("", text).strip()
    return content, tuple(calls), tuple(invalid)


def _parse_llama(text: str, tools: Sequence[ToolSpec]) -> Parsed:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith('{"name"') and not body.startswith("{'name'"):
        return text.strip(), (), ()
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    decoder = json.JSONDecoder()
    rest = body
    while rest:
        try:
            value, used = decoder.raw_decode(rest)
        except ValueError:
            _one(rest, "parameters", tools, calls, invalid, cut=True)
            break
        _one(json.dumps(value), "parameters", tools, calls, invalid, cut=False)
        rest = rest[used:].lstrip().lstrip(";").lstrip()
    return "", tuple(calls), tuple(invalid)


def _parse_mistral(text: str, tools: Sequence[ToolSpec]) -> Parsed:
    head, sep, tail = text.partition("[TOOL_CALLS]")
    if not sep:
        return text.strip(), (), ()
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    tail = tail.strip()
    try:
        value, _ = json.JSONDecoder().raw_decode(tail)
        items = value if isinstance(value, list) else [value]
        for item in items:
            _one(json.dumps(item), "arguments", tools, calls, invalid, cut=False)
    except ValueError:
        if "[ARGS]" in tail:  # v11 tokenizers: [TOOL_CALLS]name[ARGS]{...}
            for part in tail.split("[TOOL_CALLS]"):
                name, _, args = part.partition("[ARGS]")
                body = json.dumps({"name": name.strip()})[:-1] + ', "arguments": ' + args + "}"
                _one(body, "arguments", tools, calls, invalid, cut=False)
        else:
            invalid.append(InvalidToolCall(None, tail, "the tool calls are not valid JSON"))
    return head.strip(), tuple(calls), tuple(invalid)


def _one(
    raw: str,
    args_key: str,
    tools: Sequence[ToolSpec],
    calls: list[ToolCall],
    invalid: list[InvalidToolCall],
    *,
    cut: bool,
) -> None:
    """Parse one call's JSON object into ``calls`` or ``invalid``."""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        why = "the reply ended inside the call" if cut else f"not valid JSON ({exc})"
        name = re.search(r'"name"\s*:\s*"([^"]*)"', raw)
        invalid.append(InvalidToolCall(name.group(1) if name else None, raw, why))
        return
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        invalid.append(InvalidToolCall(None, raw, "a call is an object with a string 'name'"))
        return
    name = value["name"]
    args = value.get(args_key, value.get("arguments", value.get("parameters", {})))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            pass
    args_text = json.dumps(args, ensure_ascii=False) if not isinstance(args, str) else args
    if name not in {t.name for t in tools}:
        invalid.append(InvalidToolCall(name, args_text, f"no bound tool is named {name!r}"))
    elif not isinstance(args, dict):
        invalid.append(InvalidToolCall(name, args_text, "the arguments are not a JSON object"))
    else:
        calls.append(ToolCall(name, args))
