"""Tools and constraints over an OpenAI-compatible server: the tool-aware chat template that
``actsteer serve`` hands vLLM renders exactly what the local engine renders; requests carry
tools, choice and grammar in vLLM's fields; replies' calls (whole or streamed in pieces) come
back as ``ToolCall`` / ``InvalidToolCall``; ``actsteer serve`` picks the tool parser flags."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest
from conftest import tiny_tokenizer

from actsteer import GenerationOptions, Request
from actsteer.cli.serve import tool_flags
from actsteer.constrain import Constraint
from actsteer.prompts import render
from actsteer.remote import RemoteEngine
from actsteer.remote.replies import Said, generation
from actsteer.tools import HERMES, tool_specs
from actsteer.tools.template import generic_template
from actsteer.tools.wire import CallPieces, openai_message, read_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": 'Weather für a city, "quoted"',
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
NOARGS = {"type": "function", "function": {"name": "now"}}
TOOLS = tool_specs([WEATHER, NOARGS])
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
CALLS = [
    {"id": "a", "type": "function", "function": PARIS},
    {"id": "b", "type": "function", "function": {"name": "now", "arguments": {}}},
]
CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paris?"}],
    [
        {"role": "user", "content": "Weather in Paris, and the time?"},
        {"role": "assistant", "content": "", "tool_calls": CALLS},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "noon", "name": "now"},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "Checking.", "tool_calls": CALLS[:1]},
        {"role": "tool", "tool_call_id": "zz", "content": "?"},
    ],
]


@pytest.mark.parametrize("tools", [TOOLS, ()], ids=["tools", "no-tools"])
@pytest.mark.parametrize("chat", CHATS, ids=["plain", "system", "history"])
def test_the_served_template_renders_what_the_local_engine_renders(chat, tools):
    tok = tiny_tokenizer()
    served = generic_template(tok.chat_template)
    wired = [openai_message(m) for m in chat]  # as the server gets them: arguments as text
    for m in wired:  # vLLM hands templates the arguments parsed back into dicts
        for c in m.get("tool_calls") or ():
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    got = tok.apply_chat_template(
        wired,
        tools=[t.openai() for t in tools] or None,
        chat_template=served,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert got == render(tok, chat, tools)


def test_serve_passes_the_tool_parser_and_the_tool_aware_template(tmp_path):
    tok = tiny_tokenizer()
    flags = tool_flags(tok, [], tmp_path / "t.jinja")
    assert flags[:3] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert flags[3:] == ["--chat-template", str(tmp_path / "t.jinja")]
    assert (tmp_path / "t.jinja").read_text() == generic_template(tok.chat_template)
    assert tool_flags(tok, ["--tool-call-parser=pythonic"], tmp_path / "u.jinja") == []
    tok.chat_template = "{% if tools %}{{ tools }}{% endif %}<tool_call>{{ messages }}"
    assert tool_flags(tok, [], tmp_path / "v.jinja") == [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]


def _kwargs(request: Request) -> dict:
    engine = RemoteEngine("http://127.0.0.1:9/v1", "m")
    return engine._kwargs(request, stream=False, timeout=None)[1]


def test_requests_carry_tools_choice_and_grammar_in_vllms_fields():
    chat = CHATS[2]
    kw = _kwargs(Request(chat, tools=TOOLS, tool_choice="get_weather"))
    assert kw["tools"] == [t.openai() for t in TOOLS]
    # forced by the local engine's own call grammar, parsed by the server's tool parser
    assert kw["tool_choice"] == "auto"
    forced = HERMES.constraint(TOOLS, "get_weather")
    assert kw["extra_body"]["structured_outputs"] == forced.wire()
    assert kw["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert kw["messages"][2] == {"role": "tool", "tool_call_id": "a", "content": "sunny"}
    auto = _kwargs(Request(chat, tools=TOOLS, parallel_tool_calls=False))
    assert auto["tool_choice"] == "auto"
    tag = json.loads(auto["extra_body"]["structured_outputs"]["structural_tag"])
    assert tag["format"]["type"] == "triggered_tags" and tag["format"]["stop_after_first"]
    none = _kwargs(Request(chat, tools=TOOLS, tool_choice="none"))
    assert none["tool_choice"] == "none" and "structured_outputs" not in none["extra_body"]
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    kw = _kwargs(Request(chat[:1], constraint=Constraint.json_schema(schema)))
    assert kw["extra_body"]["structured_outputs"] == Constraint.json_schema(schema).wire()
    assert "tools" not in kw


def test_calls_are_read_and_bad_ones_are_invalid_calls():
    raw = [
        NS(id="1", function=NS(name="get_weather", arguments='{"city": "Oslo"}')),
        {"id": "2", "function": {"name": "nope", "arguments": "{}"}},
        {"id": "3", "function": {"name": "get_weather", "arguments": '{"city": '}},
        {"id": "4", "function": {"name": "now", "arguments": "[1]"}},
        {"function": {"name": "now", "arguments": ""}},
    ]
    calls, invalid = read_calls(raw, TOOLS)
    assert [(c.name, c.arguments, c.id) for c in calls] == [
        ("get_weather", {"city": "Oslo"}, "1"),
        ("now", {}, calls[1].id),
    ]
    assert [(i.id, i.name) for i in invalid] == [("2", "nope"), ("3", "get_weather"), ("4", "now")]
    assert "no bound tool" in invalid[0].error and "JSON" in invalid[1].error
    g = generation(Request(CHATS[0], tools=TOOLS), " ok ", "tool_calls", None, (), raw[:1])
    assert g.finish_reason == "tool_calls" and g.text == "ok" and g.tool_calls == calls[:1]


def test_a_streamed_call_is_put_together_from_its_pieces():
    def chunk(content=None, calls=None, finish=None):
        delta = NS(content=content, tool_calls=calls)
        return NS(choices=[NS(delta=delta, finish_reason=finish)], usage=None)

    pieces = [
        chunk("Sure."),
        chunk(calls=[NS(index=0, id="x", function=NS(name="get_weather", arguments=None))]),
        chunk(calls=[NS(index=0, id=None, function=NS(name=None, arguments='{"city": '))]),
        chunk(calls=[NS(index=0, id=None, function=NS(name=None, arguments='"Rome"}'))]),
        chunk(calls=[NS(index=1, id="y", function=NS(name="now", arguments="{}"))]),
        chunk(finish="tool_calls"),
    ]
    said = Said()
    shown = "".join(said.add(c) for c in pieces)
    g = said.generation(Request(CHATS[0], tools=TOOLS, options=GenerationOptions()))
    assert shown == "Sure." and g.text == "Sure." and g.finish_reason == "tool_calls"
    assert [(c.name, c.arguments, c.id) for c in g.tool_calls] == [
        ("get_weather", {"city": "Rome"}, "x"),
        ("now", {}, "y"),
    ]
    joined = CallPieces()
    joined.add([{"index": 0, "function": {"name": "a", "arguments": "{"}}])
    assert joined.whole() == [{"id": None, "function": {"name": "a", "arguments": "{"}}]
