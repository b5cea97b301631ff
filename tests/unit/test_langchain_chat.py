"""ChatSteer on a tiny random model: construction, steering options, streaming, caching,
metadata, message rendering and structured output."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from conftest import build_tiny, random_vector, tiny_tokenizer
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import BaseModel, ValidationError

from actsteer import Generation, SteeredModel, Steering, SteeringVector
from actsteer.constrain import Constraint
from actsteer.errors import ExpressionError, SteeringSpecError, ToolSpecError
from langchain_steer import ChatSteer
from langchain_steer.messages import render_messages

GEN = {"max_tokens": 8}


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory):
    """Preset vectors extracted for the tiny model go to a private cache folder; one torch
    thread, because tiny models run many times slower on two threads of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTSTEER_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sm() -> SteeredModel:
    return build_tiny("llama", seed=11)


@pytest.fixture(scope="module")
def vec(sm) -> SteeringVector:
    return random_vector(sm, [1, 2], 2.0, seed=4)


@pytest.fixture
def chat(sm) -> ChatSteer:
    return ChatSteer(runtime=sm, **GEN)


class Recorder(BaseCallbackHandler):
    """Counts the callbacks LangChain tracing relies on."""

    def __init__(self) -> None:
        self.starts = 0
        self.ends = 0
        self.tokens: list[str] = []

    def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.starts += 1

    def on_llm_start(self, serialized, prompts, **kwargs) -> None:
        self.starts += 1

    def on_llm_end(self, response, **kwargs) -> None:
        self.ends += 1

    def on_llm_new_token(self, token, **kwargs) -> None:
        self.tokens.append(token)


def test_construction_is_lazy_and_shares_one_runtime(monkeypatch, sm):
    calls = []

    def shared(model_id=None, **kwargs):
        calls.append((model_id, kwargs))
        return sm

    monkeypatch.setattr(SteeredModel, "shared", staticmethod(shared))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # a Hub id that may load online
    a = ChatSteer()
    b = ChatSteer(model="org/model", model_kwargs={"dtype": "bfloat16"})
    assert calls == [] and a.runtime is None
    assert a.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct" and b.model_name == "org/model"
    assert a.steered_model() is sm and a.steered_model() is sm
    b.steered_model()
    assert calls == [(None, {}), ("org/model", {"dtype": "bfloat16"})]


def test_init_accepts_remote_options_and_rejects_typos_and_bad_steering(sm):
    ChatSteer(runtime=sm, api_key="x", max_retries=2, timeout=5, temperature=0.5, stop=["a"])
    with pytest.raises(ValidationError, match="steerin"):
        ChatSteer(runtime=sm, steerin="json")
    with pytest.raises(SteeringSpecError, match="did you mean 'json'"):
        ChatSteer(runtime=sm, steering="jsno:4")
    with pytest.raises(ExpressionError):
        ChatSteer(runtime=sm, steering="json:4 +")
    with pytest.raises(SteeringSpecError):
        ChatSteer(runtime=sm, steering=42)


def test_steering_changes_output_and_call_options_beat_fields(chat, vec):
    plain = chat.invoke("hello there").content
    steered = chat.invoke("hello there", steering=vec).content
    assert steered != plain
    field = chat.with_steering(vec)
    assert isinstance(field, ChatSteer) and field.runtime is chat.runtime
    assert field.invoke("hello there").content == steered
    assert field.invoke("hello there", steering=None).content == plain
    assert field.invoke("hello there", steering_coeff=0.0).content == plain
    assert field.bind(steering=-1.0 * vec).invoke("hello there").content == (
        chat.invoke("hello there", steering=Steering(vec, -1.0)).content
    )
    assert chat.bind(steering=vec).invoke("hello there").content == steered


def test_steering_kwargs_reach_the_engine_as_resolve_options(chat, vec):
    sm = chat.steered_model()
    msg = chat.invoke("hi", steering=vec, steering_coeff=0.5, steering_positions="generated")
    (s,) = sm.resolve(vec, coeff=0.5, positions="generated")
    info = msg.response_metadata["steering"]
    assert info["terms"][0]["coeff"] == 0.5 and info["terms"][0]["positions"] == "generated"
    assert info["terms"][0]["digest"] == vec.digest()
    direct = sm.generate([{"role": "user", "content": "hi"}], s, max_new_tokens=8)
    assert msg.content == direct


def test_agent_model_settings_arrive_as_bind_kwargs(chat, vec):
    # LangChain v1 agents call request.model.bind(**request.model_settings) when no tools are
    # bound; middleware that sets {"steering": ...} therefore reaches _generate like this
    settings = {"steering": vec, "max_tokens": 4, "timeout": 30}
    bound = chat.bind(**settings).invoke("plan the next step")
    assert bound.content == chat.invoke("plan the next step", **settings).content
    assert bound.usage_metadata["output_tokens"] <= 4
    assert bound.response_metadata["steering"]["terms"][0]["digest"] == vec.digest()


def test_agent_middleware_steers_the_model_call(chat, vec):
    """A LangChain v1 agent whose middleware sets steering through the model settings."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call

    seen: list = []

    @wrap_model_call
    def no_disclaimer(request, handler):
        settings = {**request.model_settings, "steering": vec, "max_tokens": 6}
        response = handler(request.override(model_settings=settings))
        seen.append(response)
        return response

    agent = create_agent(model=chat, tools=[], middleware=[no_disclaimer])
    out = agent.invoke({"messages": [HumanMessage("plan the next step")]})
    reply = out["messages"][-1]
    assert isinstance(reply, AIMessage) and len(seen) == 1
    assert reply.content == chat.invoke("plan the next step", steering=vec, max_tokens=6).content
    assert reply.response_metadata["steering"]["terms"][0]["digest"] == vec.digest()
    plain = create_agent(model=chat, tools=[]).invoke({"messages": [HumanMessage("plan")]})
    assert plain["messages"][-1].response_metadata["steering"]["terms"] == []


def test_configurable_field_switches_steering_per_invocation(chat, vec, monkeypatch):
    monkeypatch.setattr(SteeredModel, "shared", None)  # a rebuilt instance must not load
    knob = chat.configurable_fields(steering=ConfigurableField(id="format_steering"))
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | knob
    plain = chain.invoke({"q": "hello there"}).content
    steered = chain.invoke(
        {"q": "hello there"}, config={"configurable": {"format_steering": vec}}
    ).content
    assert plain == chat.invoke("hello there").content
    assert steered == chat.invoke("hello there", steering=vec).content != plain


def test_stream_equals_invoke_and_ends_with_usage(chat, vec):
    ref = chat.invoke("tell me", steering=vec)
    rec = Recorder()
    chunks = list(chat.stream("tell me", steering=vec, config={"callbacks": [rec]}))
    assert "".join(c.content for c in chunks) == ref.content
    last = chunks[-1]
    assert last.chunk_position == "last" and last.usage_metadata == ref.usage_metadata
    assert last.response_metadata["finish_reason"] == ref.response_metadata["finish_reason"]
    assert rec.starts == 1 and rec.ends == 1 and "".join(rec.tokens) == ref.content
    assert len(rec.tokens) == len(chunks)
    rec = Recorder()  # streaming=True: invoke itself goes through the token stream
    streaming = ChatSteer(runtime=chat.runtime, streaming=True, steering=vec, **GEN)
    msg = streaming.invoke("tell me", config={"callbacks": [rec]})
    assert msg.content == ref.content and msg.usage_metadata == ref.usage_metadata
    assert "".join(rec.tokens) == ref.content and len(rec.tokens) == len(chunks)


async def test_async_paths_equal_sync_and_do_not_block_the_loop(chat, vec, monkeypatch):
    ref = chat.invoke("tell me", steering=vec)
    assert (await chat.ainvoke("tell me", steering=vec)).content == ref.content
    pieces = [c.content async for c in chat.astream("tell me", steering=vec)]
    assert "".join(pieces) == ref.content
    sm = chat.steered_model()

    def sleepy(rows: int) -> None:
        time.sleep(0.3)  # a blocking generate; the event loop must keep running meanwhile
        slept.append(rows)

    slept: list[int] = []
    remove = sm.engine.observe(sleepy)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await chat.ainvoke("tell me")
    await chat.abatch(["a", "b"])
    task.cancel()
    remove()
    assert slept == [1, 2] and ticks >= 20  # the abatch rows generated together


def test_streaming_rows_of_a_batch_generate_once_and_together(sm, request):
    """A streaming handler (``astream_events``, LangGraph's "messages" mode) made every row
    generate twice, once unused; ``streaming=True`` rows generated one at a time."""
    from langchain_core.tracers._streaming import _StreamingCallbackHandler

    class Tap(BaseCallbackHandler, _StreamingCallbackHandler):
        def tap_output_iter(self, run_id, output):
            return output

        def tap_output_aiter(self, run_id, output):
            return output

    rows: list[int] = []
    request.addfinalizer(sm.engine.observe(rows.append))
    inputs = [f"hello {i}" for i in range(6)]
    expected = [ChatSteer(runtime=sm, max_tokens=40).invoke(x).content for x in inputs]
    rows.clear()
    tapped = ChatSteer(runtime=sm, max_tokens=40).batch(inputs, config={"callbacks": [Tap()]})
    assert [m.content for m in tapped] == expected and sum(rows) == len(inputs)
    rows.clear()
    streamed = ChatSteer(runtime=sm, max_tokens=40, streaming=True).batch(inputs)
    assert [m.content for m in streamed] == expected and sum(rows) == len(inputs)
    assert len(rows) < len(inputs)  # started together, the streams merged


def test_cache_never_mixes_steered_and_unsteered(sm, vec, monkeypatch, request):
    calls = []
    remove = sm.engine.observe(lambda rows: calls.append(rows))
    request.addfinalizer(remove)
    chat = ChatSteer(runtime=sm, cache=InMemoryCache(), **GEN)
    twin = SteeringVector({1: -vec.directions[1], 2: -vec.directions[2]})  # same repr
    assert repr(twin) == repr(vec) and twin.digest() != vec.digest()
    outs = [
        chat.invoke("cached?").content,
        chat.invoke("cached?", steering=vec).content,
        chat.invoke("cached?", steering=twin).content,
        chat.with_steering(vec).invoke("cached?").content,
        chat.invoke("cached?").content,
    ]
    assert len(calls) == 3  # the last two were served from the cache
    assert outs[0] == outs[4] and outs[1] == outs[3]
    assert len({outs[0], outs[1], outs[2]}) == 3
    assert chat._identifying_params["steering"] is None
    assert chat.with_steering(vec)._identifying_params["steering"] == f"vector:{vec.digest()}"
    assert chat.with_steering("json:2")._identifying_params["steering"] == "json:2"


def test_metadata_usage_and_finish_reason(chat, sm):
    msg = chat.invoke("hello", steering="love:2")
    detail = sm.generate_detailed(
        [{"role": "user", "content": "hello"}], sm.resolve("love:2"), max_new_tokens=8
    )
    assert msg.content == detail.text
    assert msg.usage_metadata == {
        "input_tokens": detail.prompt_tokens,
        "output_tokens": detail.completion_tokens,
        "total_tokens": detail.prompt_tokens + detail.completion_tokens,
    }
    meta = msg.response_metadata
    assert meta["model_name"] == "tiny-llama" and meta["finish_reason"] == detail.finish_reason
    assert meta["steering"]["expression"].startswith("love:2")
    assert meta["steering"]["terms"][0]["layers"]
    assert chat._get_ls_params(stop=["x"])["ls_provider"] == "actsteer"


def test_stop_max_tokens_and_sampling_options(chat):
    PROMPT = "tell me a story"  # its reply on this seed contains ASCII letters
    long = chat.invoke(PROMPT, max_tokens=12).content
    assert chat.invoke(PROMPT, max_tokens=3).usage_metadata["output_tokens"] == 3
    k = next(i for i, ch in enumerate(long) if i > 0 and ch.isascii() and ch.isalnum())
    # a stop string inside the reply: the reply ends right before its first occurrence
    stop = [long[k]]
    stopped = chat.invoke(PROMPT, max_tokens=12, stop=stop)
    assert stopped.content == long[: long.find(long[k])]
    assert stopped.response_metadata["finish_reason"] == "stop"
    streamed = "".join(c.content for c in chat.stream(PROMPT, max_tokens=12, stop=stop))
    assert streamed == stopped.content
    assert ChatSteer(runtime=chat.runtime, max_tokens=12, stop=stop).invoke(PROMPT).content == (
        stopped.content
    )
    a = chat.invoke(PROMPT, temperature=1.0, seed=7).content
    assert a == chat.invoke(PROMPT, temperature=1.0, seed=7).content
    sampled = {chat.invoke(PROMPT, temperature=1.5, top_p=0.9, seed=s).content for s in range(4)}
    assert len(sampled) > 1


def test_bad_call_options_fail_clearly(chat):
    with pytest.raises(ToolSpecError, match="a tool name is"):
        chat.invoke("hi", tools=[{"name": "bad name!"}])
    with pytest.raises(TypeError, match="unknown call options"):
        chat.invoke("hi", temprature=0.3)
    with pytest.raises(ValueError, match="cannot switch"):
        chat.invoke("hi", model="other/model")
    assert chat._get_ls_params(model="other/model")["ls_model_name"] == "other/model"


def test_every_message_type_renders_through_the_template(chat, sm):
    history = [
        SystemMessage("be brief"),
        HumanMessage("weather?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}, "id": "1"}]),
        ToolMessage("sunny", tool_call_id="1", name="get_weather"),
        AIMessage("It is sunny."),
    ]
    chat_dicts = render_messages(sm, history)
    assert [m["role"] for m in chat_dicts] == ["system", "user", "assistant", "tool", "assistant"]
    call = chat_dicts[2]["tool_calls"][0]
    assert call["id"] == "1"
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert chat_dicts[3]["tool_call_id"] == "1"
    text = sm.render(chat_dicts)  # the tiny template has no tools: the generic form
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    )
    assert "<|im_start|>user\nget_weather returned: sunny<|im_end|>" in text
    assert isinstance(chat.invoke(history), AIMessage)  # the last message need not be human


def test_strict_templates_get_the_portable_shape():
    tok = tiny_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
        "{% endif %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
        "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if 'tool' %}{% endif %}"
    )
    sm = build_tiny("llama", seed=11)
    sm.tokenizer = tok
    messages = [
        SystemMessage("S"),
        HumanMessage("a"),
        HumanMessage("b"),
        ToolMessage("t", tool_call_id="1"),
    ]
    # the tool result is written as a user turn in words (actsteer.tools.render), and
    # that chat in the portable shape: system text and same-role turns merged into one user turn
    assert sm.render(render_messages(sm, messages)) == ("[user]S\n\na\n\nb\n\nThe tool returned: t")
    sm.tokenizer.chat_template = None  # no template at all: plain "role: content" lines
    assert sm.render(render_messages(sm, [HumanMessage("x")])).endswith("user: x\nassistant:")


class Person(BaseModel):
    name: str
    age: int


def _fake_reply(monkeypatch, sm, text: str) -> list:
    """The engine answers ``text`` to every request; returns the requests it got."""
    seen = []

    def reply(requests, **kwargs):
        seen.extend(requests)
        return [Generation(text, 5, 5, "stop", "json") for _ in requests]

    monkeypatch.setattr(sm.engine, "generate", reply)
    return seen


def test_structured_output_steers_instructs_parses_and_validates(chat, sm, monkeypatch):
    seen = _fake_reply(monkeypatch, sm, 'Sure! {"name": "Ada", "age": 36} hope it helps')
    person = chat.with_structured_output(Person).invoke("Ada is 36.")
    assert person == Person(name="Ada", age=36)
    prompt, steering = seen[0].prompt, seen[0].steering
    assert prompt[0]["role"] == "system" and '"age" (integer, required)' in prompt[0]["content"]
    assert seen[0].constraint == Constraint.json_schema(convert_to_json_schema(Person))
    assert steering == ()  # the grammar makes the format: no steering is added for it
    as_dict = chat.with_structured_output(Person.model_json_schema(), method="json_mode")
    assert as_dict.invoke("Ada is 36.") == {"name": "Ada", "age": 36}
    assert seen[-1].constraint == Constraint.json_object()
    both = chat.with_steering("concise").with_structured_output(Person, method="function_calling")
    with pytest.raises(OutputParserException, match="no call of 'Person'"):  # text, no call
        both.invoke("x")
    assert [t.name for t in seen[-1].tools] == ["Person"] and seen[-1].tool_choice == "Person"
    assert [t.name for s in seen[-1].steering for t in s.terms] == ["concise"]
    # the model's own steering applies to what it writes inside the JSON
    chat.with_steering({"expression": "love", "positions": "generated"}).with_structured_output(
        Person
    ).invoke("x")
    assert [t.name for s in seen[-1].steering for t in s.terms] == ["love"]


def test_structured_output_errors_and_include_raw(chat, sm, monkeypatch):
    _fake_reply(monkeypatch, sm, '{"name": "Ada"}')
    with pytest.raises(OutputParserException, match="Person"):
        chat.with_structured_output(Person).invoke("x")
    with pytest.raises(OutputParserException, match="required keys"):
        chat.with_structured_output(Person.model_json_schema()).invoke("x")
    raw = chat.with_structured_output(Person, include_raw=True).invoke("x")
    assert raw["parsed"] is None and isinstance(raw["parsing_error"], OutputParserException)
    assert raw["raw"].content == '{"name": "Ada"}'
    for method in ("json_schema", "function_calling", "json_mode"):  # streamed: never raises
        *_, last = chat.with_structured_output(Person, method=method, include_raw=True).stream("x")
        assert set(last) == {"raw", "parsed", "parsing_error"}
        assert isinstance(last["parsed"], Person) or last["parsing_error"] is not None
    _fake_reply(monkeypatch, sm, "no json here")
    with pytest.raises(OutputParserException, match="no JSON object"):
        chat.with_structured_output(Person, strict=True).invoke("x")
    with pytest.raises(ValueError, match="unsupported"):
        chat.with_structured_output(Person, tools=[])
