"""SteerLLM as a LlamaIndex FunctionCallingLLM on a tiny random model: forced calls are well
formed (a grammar), responses map to ToolSelections, tool history renders through the engine,
predict_and_call runs the tool, streaming ends with the same calls, the tool policy picks each
step's choice, and structured output follows the schema's grammar. Expected values come from
the engine called directly with the request the adapter should build."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from conftest import random_vector
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, ToolCallBlock
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.core.types import PydanticProgramMode
from pydantic import BaseModel

from actsteer import GenerationOptions, Request
from actsteer.constrain import Constraint
from actsteer.tools import tool_specs
from llamaindex_steer import SteerLLM
from llamaindex_steer.calls import as_engine_message
from llamaindex_steer.tools import text_reply

GEN = 120  # a call of add on the byte-level tiny vocabulary takes ~80 tokens


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def square(x: int) -> int:
    """Square an integer."""
    return x * x


ADD, SQUARE = FunctionTool.from_defaults(add), FunctionTool.from_defaults(square)
ADD_DICT = ADD.metadata.to_openai_tool()


ASK = PromptTemplate("Is everything fine?")


class Flag(BaseModel):
    ok: bool
    level: Literal["low", "high"]


@pytest.fixture
def llm(llama) -> SteerLLM:
    return SteerLLM(runtime=llama, max_new_tokens=GEN, structured_steering=None)


def calls(response: ChatResponse, llm: SteerLLM) -> list[tuple[str, dict]]:
    return [(s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(response)]


def history(call_id: str = "c1") -> list[ChatMessage]:
    """A turn with one call of add (as FunctionAgent keeps it) and the tool's result."""
    return [
        ChatMessage(role="user", content="add 2 and 3"),
        ChatMessage(
            role="assistant",
            blocks=[
                ToolCallBlock(tool_call_id=call_id, tool_name="add", tool_kwargs={"a": 2, "b": 3})
            ],
        ),
        ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": call_id}),
    ]


def test_a_required_call_is_a_well_formed_call_of_a_bound_tool(llm, llama):
    response = llm.chat_with_tools([ADD, SQUARE], "go", tool_required=True)
    assert response.raw["finish_reason"] == "tool_calls"
    ((name, kwargs),) = calls(response, llm)  # one call: allow_parallel_tool_calls=False
    assert name in ("add", "square")
    schema = {"add": {"a", "b"}, "square": {"x"}}[name]
    assert set(kwargs) == schema
    # exactly what the engine answers to the request the adapter should have built
    tools = [t.metadata.to_openai_tool() for t in (ADD, SQUARE)]
    request = Request(
        [{"role": "user", "content": "go"}],
        options=GenerationOptions(max_new_tokens=GEN),
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    (g,) = llama.engine.generate([request])
    assert [(c.name, c.arguments) for c in g.tool_calls] == [(name, kwargs)]
    block = next(b for b in response.message.blocks if isinstance(b, ToolCallBlock))
    assert block.tool_call_id and llm.get_tool_calls_from_response(response)[0].tool_id == (
        block.tool_call_id
    )
    named = llm.chat_with_tools([ADD, SQUARE], "go", tool_choice="square")
    assert [n for n, _ in calls(named, llm)] == ["square"]


def test_get_tool_calls_from_response_maps_and_fails_clearly(llm):
    plain = llm.chat([ChatMessage(role="user", content="hello")], max_new_tokens=5)
    with pytest.raises(ValueError, match="holds no tool call"):
        llm.get_tool_calls_from_response(plain)
    assert llm.get_tool_calls_from_response(plain, error_on_no_tool_call=False) == []
    # a call cut off by max_new_tokens: the chat itself never raises; the reply keeps it aside
    cut = llm.chat_with_tools([ADD], "go", tool_required=True, max_new_tokens=50)
    assert cut.raw["finish_reason"] == "length"
    (invalid,) = cut.message.additional_kwargs["invalid_tool_calls"]
    assert invalid["name"] == "add" and "ended inside" in invalid["error"]
    with pytest.raises(ValueError, match=r"only invalid ones.*ended inside the call"):
        llm.get_tool_calls_from_response(cut)
    # other integrations' blocks carry the arguments as JSON text
    foreign = ChatResponse(
        message=ChatMessage(
            role="assistant",
            blocks=[
                ToolCallBlock(tool_call_id="x", tool_name="add", tool_kwargs='{"a": 1, "b": 2}')
            ],
        )
    )
    (selection,) = llm.get_tool_calls_from_response(foreign)
    assert (selection.tool_id, selection.tool_kwargs) == ("x", {"a": 1, "b": 2})


def test_tool_history_renders_through_the_engine(llm, llama):
    expected = [
        {"role": "user", "content": "add 2 and 3"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "add", "arguments": {"a": 2, "b": 3}},
                    "id": "c1",
                }
            ],
        },
        {"role": "tool", "content": "5", "tool_call_id": "c1"},
    ]
    request = llm._request({"tools": [ADD]}, messages=history())
    assert request.prompt == expected
    # the pre-block form (OpenAI-shaped additional_kwargs, arguments as JSON text) reads the same
    legacy = history()
    legacy[1] = ChatMessage(
        role="assistant",
        content="",
        additional_kwargs={
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ]
        },
    )
    assert llm._request({"tools": [ADD]}, messages=legacy).prompt == expected
    plain = as_engine_message(history()[1], plain=True)  # for a server: arguments as JSON text
    assert json.loads(plain["tool_calls"][0]["function"]["arguments"]) == {"a": 2, "b": 3}
    rendered = llama.render(expected, tool_specs([ADD_DICT]))
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>' in rendered
    response = llm.chat(history(), tools=[ADD], max_new_tokens=8)
    assert response.raw["usage"]["prompt_tokens"] == len(
        llama.encode(expected, tool_specs([ADD_DICT]))
    )
    (g,) = llama.engine.generate(
        [Request(expected, options=GenerationOptions(max_new_tokens=8), tools=[ADD_DICT])]
    )
    assert response.message.content == g.text


def test_predict_and_call_runs_the_tool(llm):
    seen: list[tuple[int, int]] = []

    def record(a: int, b: int) -> int:
        """Add two integers."""
        seen.append((a, b))
        return a + b

    tool = FunctionTool.from_defaults(record, name="add")
    out = llm.predict_and_call([tool], "go", tool_required=True)
    ((a, b),) = seen
    assert out.response == str(a + b)
    assert out.sources[0].tool_name == "add" and out.sources[0].raw_input["kwargs"] == {
        "a": a,
        "b": b,
    }


async def test_streamed_forced_calls_end_with_the_same_calls(llm):
    whole = llm.chat_with_tools([ADD], "go", tool_required=True)
    parts = list(llm.stream_chat_with_tools([ADD], "go", tool_required=True))
    final = parts[-1]
    assert calls(final, llm) == calls(whole, llm) != []
    assert "".join(p.delta or "" for p in parts) == (whole.message.content or "")
    assert final.raw["finish_reason"] == "tool_calls" and final.raw["usage"] == whole.raw["usage"]
    aparts = [p async for p in await llm.astream_chat_with_tools([ADD], "go", tool_required=True)]
    assert calls(aparts[-1], llm) == calls(whole, llm)
    assert calls(await llm.achat_with_tools([ADD], "go", tool_required=True), llm) == calls(
        whole, llm
    )


def test_tool_policy_calls_first_then_answers_in_text(llama):
    vec = random_vector(llama, [1, 2], 2.0)
    llm = SteerLLM(
        runtime=llama, max_new_tokens=16, tool_policy="call_then_answer", answer_steering=vec
    )
    first = llm._prepare_chat_with_tools([ADD], "go")
    assert first["tool_choice"] == "required" and "extra_steering" not in first
    after = llm._prepare_chat_with_tools([ADD], chat_history=history())
    assert after["tool_choice"] == "none" and after["extra_steering"] is vec
    assert after["tools"] == [ADD_DICT] and after["parallel_tool_calls"] is False
    # an explicit choice (FunctionAgent's initial_tool_choice) or tool_required still wins
    assert llm._prepare_chat_with_tools([ADD], "go", tool_choice="add")["tool_choice"] == "add"
    assert (
        llm._prepare_chat_with_tools([ADD], chat_history=history(), tool_required=True)[
            "tool_choice"
        ]
        == "required"
    )
    auto = SteerLLM(runtime=llama)._prepare_chat_with_tools([ADD], chat_history=history())
    assert auto["tool_choice"] == "auto" and "extra_steering" not in auto
    # the answer step: text that writes no call, steered by answer_steering
    kwargs = {k: v for k, v in after.items() if k != "messages"}
    assert llm._request(kwargs, messages=history()).constraint == text_reply(llama.tokenizer)
    answer = llm.chat(**after)
    assert llm.get_tool_calls_from_response(answer, error_on_no_tool_call=False) == []
    assert answer.message.content and not answer.message.content.startswith("<")
    assert [t["digest"] for t in answer.raw["steering"]["terms"]] == [vec.digest()]


def test_structured_predict_follows_the_schema_grammar(llm):
    kw = llm._structured_kwargs(Flag, None)
    assert kw["constraint"] == Constraint.json_schema(Flag.model_json_schema())
    # a random model writes a valid Flag only because the grammar lets it write nothing else
    flag = llm.structured_predict(Flag, ASK)
    assert isinstance(flag, Flag)
    with pytest.raises(ValueError):  # the same call without the grammar does not parse
        llm.structured_predict(Flag, ASK, llm_kwargs={"constraint": None})
    # function-calling mode: a forced call of the schema as a tool, no extra constraint
    fc = llm.model_copy(update={"pydantic_program_mode": PydanticProgramMode.FUNCTION})
    assert "constraint" not in fc._structured_kwargs(Flag, None)
    assert isinstance(fc.structured_predict(Flag, ASK), Flag)
