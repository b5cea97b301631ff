"""Tool calling (``actsteer.tools``): specs and choices, the reply parsers on recorded replies of
each format (malformed ones included), rendering through a tool-aware template and the generic
block, and forced calls on a random model (well formed because they are a grammar)."""

from __future__ import annotations

import json

import pytest

from actsteer import GenerationOptions, Request
from actsteer.errors import ToolSpecError
from actsteer.tools import GENERIC, HERMES, LLAMA, MISTRAL, format_for, tool_choice, tool_specs
from actsteer.tools.formats import shown_content

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOLS = tool_specs([ADD, WEATHER])

# a Qwen2.5-style template: tools in the system turn, <tool_call> replies, <tool_response> turns
QWEN_LIKE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    '{% for c in m.tool_calls or [] %}<tool_call>\n{"name": "{{ c.function.name }}", '
    '"arguments": {{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n'
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- specs and choices ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([{"type": "function", "function": {"name": "bad name!"}}], "a tool name is"),
        ([{"function": {"description": "no name"}}], "needs a function name"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
            "parameters must be a JSON object schema",
        ),
        (
            [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"x": {"type": "nope"}}},
                    },
                }
            ],
            "Unsupported type",
        ),
        ([ADD, ADD], "share the name 'add'"),
        (["add"], "a dict in OpenAI's format"),
    ],
)
def test_bad_tools_are_refused(tools, message):
    with pytest.raises(ToolSpecError, match=message):
        tool_specs(tools)


def test_tool_choice_spellings():
    assert tool_choice(None, TOOLS) == tool_choice("auto", TOOLS) == "auto"
    assert tool_choice(False, TOOLS) == tool_choice("none", TOOLS) == "none"
    assert tool_choice("any", TOOLS) == tool_choice(True, TOOLS) == "required"
    assert tool_choice({"type": "function", "function": {"name": "add"}}, TOOLS) == "add"
    with pytest.raises(ToolSpecError, match="'mul', which is not a bound tool"):
        tool_choice("mul", TOOLS)
    with pytest.raises(ToolSpecError, match="needs at least one bound tool"):
        tool_choice("any", ())


# -- parsers over recorded replies ---------------------------------------------------------------
def test_hermes_replies():
    text = (
        "Let me add.\n<tool_call>\n"
        '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n'
        "</tool_call>"
    )
    content, calls, invalid = HERMES.parse(text, TOOLS)
    assert content == "Let me add."
    assert [(c.name, c.arguments) for c in calls] == [
        ("add", {"a": 1, "b": 2}),
        ("get_weather", {"city": "Paris"}),  # arguments written as a JSON string
    ]
    assert not invalid and len({c.id for c in calls}) == 2


@pytest.mark.parametrize(
    ("text", "name", "error"),
    [
        ('<tool_call>\n{"name": "mul", "arguments": {}}\n</tool_call>', "mul", "no bound tool"),
        ('<tool_call>\n{"name": "add", "arguments": {"a": 1,\n</tool_call>', "add", "not valid"),
        ('<tool_call>\n{"name": "add", "arguments": {"a": 1', "add", "ended inside the call"),
        ('<tool_call>\n["add"]\n</tool_call>', None, "string 'name'"),
        ('<tool_call>\n{"name": "add", "arguments": [1]}\n</tool_call>', "add", "not a JSON obj"),
    ],
)
def test_malformed_hermes_calls_are_invalid_calls_never_errors(text, name, error):
    content, calls, invalid = HERMES.parse(text, TOOLS)
    assert content == ""
    assert not calls and len(invalid) == 1
    assert invalid[0].name == name and error in invalid[0].error


def test_llama_and_mistral_replies():
    _, calls, _ = LLAMA.parse(
        '<|python_tag|>{"name": "add", "parameters": {"a": 2, "b": 3}}', TOOLS
    )
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 2, "b": 3})]
    content, calls, _ = LLAMA.parse("The answer is {1}.", TOOLS)
    assert content == "The answer is {1}." and not calls
    text = '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 1}}, {"name": "x"}]'
    _, calls, invalid = MISTRAL.parse(text, TOOLS)
    assert [c.name for c in calls] == ["add"] and [i.name for i in invalid] == ["x"]
    _, calls, _ = MISTRAL.parse('[TOOL_CALLS]add[ARGS]{"a": 4, "b": 5}', TOOLS)
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 4, "b": 5})]
    _, _, invalid = MISTRAL.parse("[TOOL_CALLS]{oops", TOOLS)
    assert invalid and "not valid JSON" in invalid[0].error


def test_a_stream_shows_only_text_that_is_surely_content():
    assert shown_content(" Sure, adding.\n<tool_call>\n{", "<tool_call>") == "Sure, adding."
    assert shown_content("Sure <tool_", "<tool_call>") == "Sure"  # may start a call
    assert shown_content("a < b", "<tool_call>") == "a < b"
    with pytest.raises(ToolSpecError, match="Mistral"):
        MISTRAL.constraint(TOOLS, "required")


# -- rendering -----------------------------------------------------------------------------------
def test_format_follows_the_chat_template(llama):
    assert format_for(llama.tokenizer) is GENERIC  # the tiny ChatML template has no tools
    tok = type("T", (), {"chat_template": QWEN_LIKE})()
    assert format_for(tok) is HERMES
    tok.chat_template = "{{ tools }} [TOOL_CALLS]"
    assert format_for(tok) is MISTRAL
    tok.chat_template = "{{ tools }} <|python_tag|> ipython"
    assert format_for(tok) is LLAMA


def _history() -> list[dict]:
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    return [
        {"role": "user", "content": "1+?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "3", "tool_call_id": "c1"},
    ]


def test_generic_block_for_templates_without_tools(llama):
    text = llama.render(_history(), tool_specs([ADD]))
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert json.dumps(tool_specs([ADD])[0].openai()) in text
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}' in text
    assert "<|im_start|>user\nadd returned: 3<|im_end|>" in text  # named by its call's id


def test_tool_aware_templates_get_the_tools_themselves(llama, monkeypatch):
    monkeypatch.setattr(llama.tokenizer, "chat_template", QWEN_LIKE)
    text = llama.render(_history(), tool_specs([ADD]))
    assert text.startswith('<|im_start|>system\n# Tools\n{"type": "function"')
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>' in text
    assert "<|im_start|>tool\n3<|im_end|>" in text  # the template's own tool role


# -- forced calls on a random model --------------------------------------------------------------
@pytest.mark.parametrize("choice", ["required", "add", "get_weather"])
def test_forced_calls_are_well_formed_on_a_random_model(llama, choice):
    opts = GenerationOptions(max_new_tokens=80)
    req = Request(_chat("go"), (), opts, tools=[ADD, WEATHER], tool_choice=choice)
    g = llama.engine.generate([req])[0]
    # a random model's string argument can run on: the budget then closes the call
    assert g.finish_reason in ("tool_calls", "length")
    assert not g.invalid_tool_calls and g.text == ""
    (call,) = g.tool_calls  # one call when forced (parallel_tool_calls=None)
    assert call.name == choice or choice == "required"
    if call.name == "add":
        assert set(call.arguments) == {"a", "b"} and all(
            isinstance(v, int) for v in call.arguments.values()
        )


def test_forced_calls_stream_as_they_generate(llama):
    req = Request(
        _chat("x"), (), GenerationOptions(max_new_tokens=60), tools=[ADD], tool_choice="add"
    )
    whole = llama.engine.generate([req])[0]
    items = list(llama.engine.stream(req))
    assert "".join(i for i in items if isinstance(i, str)) == whole.text
    final = items[-1]
    assert final.token_ids == whole.token_ids
    assert [(c.name, c.arguments) for c in final.tool_calls] == [
        (c.name, c.arguments) for c in whole.tool_calls
    ]


def test_tools_with_a_raw_prompt_are_refused(llama):
    with pytest.raises(ToolSpecError, match="need chat messages"):
        llama.engine.generate([Request("raw text", tools=[ADD])])


# -- a forced call finishes inside its budget ----------------------------------------------------
@pytest.mark.parametrize("budget", [75, 80, 90, 120])  # the shortest call here is 75 tokens
def test_a_forced_call_is_closed_inside_a_tight_budget(llama, budget):
    """A forced call a random model could not finish in ``budget`` tokens is closed well formed
    (``finish_reason="length"``: its arguments may be cut short); stream, batch row and single
    request say the same."""
    opts = GenerationOptions(max_new_tokens=budget)
    req = Request(_chat("go"), (), opts, tools=[WEATHER], tool_choice="required")
    g = llama.engine.generate([req])[0]
    assert not g.invalid_tool_calls and [c.name for c in g.tool_calls] == ["get_weather"]
    assert g.completion_tokens <= budget
    assert set(g.tool_calls[0].arguments) <= {"city"}
    if budget == 75:  # room for the shortest call only: the budget wrote it whole
        assert g.finish_reason == "length" and g.tool_calls[0].arguments.get("city", "") == ""
    neighbour = Request(_chat("talk"), (), opts)
    assert llama.engine.generate([neighbour, req])[1].token_ids == g.token_ids
    final = list(llama.engine.stream(req))[-1]
    assert (final.token_ids, final.finish_reason) == (g.token_ids, g.finish_reason)


def test_a_budget_too_small_for_any_call_is_still_reported_cut(llama):
    opts = GenerationOptions(max_new_tokens=6)
    g = llama.engine.generate(
        [Request(_chat("go"), (), opts, tools=[WEATHER], tool_choice="required")]
    )[0]
    assert g.finish_reason == "length" and not g.tool_calls  # no call begun, none read


def test_the_closing_plan_ends_the_grammar_and_touches_nothing(llama):
    import xgrammar as xgr

    fmt = format_for(llama.tokenizer)
    constraint = fmt.constraint(tool_specs([ADD, WEATHER]), "required")
    engine = llama.engine
    compiled = engine._grammar(Request(_chat("x"), tools=[ADD, WEATHER], tool_choice="required"))
    assert constraint is not None and compiled is not None
    matcher = xgr.GrammarMatcher(compiled)
    start = fmt.begin.replace("{name}", "get_weather") + '{"city": "Osl'
    assert matcher.accept_string(start)
    plan = engine._grammars.closer.plan(matcher)
    assert plan and plan[-1] in llama.eos_token_ids
    assert not matcher.is_terminated()  # planned on a fork
    for token in plan:
        assert matcher.accept_token(token)
    assert matcher.is_terminated()
    text = start + llama.tokenizer.decode(plan[:-1])
    call = json.loads(text.split("\n", 1)[1].rsplit("\n", 1)[0])
    assert call["name"] == "get_weather" and call["arguments"]["city"].startswith("Osl")
