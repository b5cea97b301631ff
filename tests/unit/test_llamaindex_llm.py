"""SteerLLM on a tiny random model: construction, prompts, steering resolution, sync/async/stream
parity and per-call isolation. Every expected text is the engine's own output for the same
prompt and steering, so each test pins the adapter's translation, not the model's quality."""

from __future__ import annotations

import asyncio

import pytest
from conftest import build_tiny, random_vector
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole
from llama_index.core.llms.function_calling import FunctionCallingLLM

from actsteer import SteeredModel, Steering, SteeringSpecError
from llamaindex_steer import SteerLLM

GEN = 10
PROMPT = "tell me something"


@pytest.fixture(scope="module")
def sm() -> SteeredModel:
    return build_tiny("llama", seed=3)


@pytest.fixture(scope="module")
def vecs(sm):
    return [random_vector(sm, [1, 2], 2.0, seed=s) for s in range(4)]


@pytest.fixture
def llm(sm) -> SteerLLM:
    return SteerLLM(runtime=sm, max_new_tokens=GEN)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def ref(sm, prompt, steering=None, **kw) -> str:
    return sm.generate(prompt, steering, **{"max_new_tokens": GEN, **kw})


def test_construction_is_lazy_and_shares_one_runtime(monkeypatch, sm):
    calls = []

    def fake_shared(model_id=None, **kwargs):
        calls.append((model_id, kwargs))
        return sm

    monkeypatch.setattr(SteeredModel, "shared", staticmethod(fake_shared))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # a Hub id that may load online
    llm = SteerLLM(model="org/some-model", model_kwargs={"dtype": "bfloat16"})
    early_copy = llm.with_steering("dogs:4")
    assert calls == []  # nothing loads at construction or when copying
    assert llm.metadata.model_name == "tiny-llama"
    assert calls == [("org/some-model", {"dtype": "bfloat16"})]
    late_copy = llm.with_steering("dogs:4")
    assert late_copy.steered_model is llm.steered_model is sm
    assert len(calls) == 1  # a copy made after loading reuses the loaded runtime
    assert early_copy.steered_model is sm  # one made before asks the registry for the same id
    assert calls[-1] == ("org/some-model", {"dtype": "bfloat16"})
    assert SteerLLM().steered_model is sm
    assert calls[-1] == (None, {})  # the embedded default


def test_metadata_context_window_and_tokenizer(llm, sm):
    meta = llm.metadata
    assert meta.context_window == 2048  # the tiny config's max_position_embeddings
    assert meta.num_output == GEN and meta.is_chat_model and meta.is_function_calling_model
    assert isinstance(llm, FunctionCallingLLM)  # what FunctionAgent and programs look for
    served = SteerLLM(base_url="http://127.0.0.1:1/v1", model="m").metadata
    assert served.is_function_calling_model  # tools go to the server
    assert SteerLLM(runtime=sm, context_window=100).metadata.context_window == 100
    assert SteerLLM(runtime=sm, context_window=10**6).metadata.context_window == 2048
    assert llm.tokenizer("hello there") == sm.tokenizer.encode("hello there")
    assert len(llm.tokenizer("hello there")) == len("hello there")  # byte-level tiny vocab


def test_complete_goes_through_the_chat_template(llm, sm):
    out = llm.complete(PROMPT)
    assert out.text == ref(sm, user(PROMPT))
    assert out.raw["usage"]["prompt_tokens"] == len(sm.encode(user(PROMPT)))
    assert llm.complete(PROMPT, formatted=True).text == ref(sm, PROMPT)  # verbatim
    with_system = SteerLLM(runtime=sm, max_new_tokens=GEN, system_prompt="be brief")
    expected = [{"role": "system", "content": "be brief"}, *user(PROMPT)]
    assert with_system.complete(PROMPT).text == ref(sm, expected)
    raw = SteerLLM(runtime=sm, max_new_tokens=GEN, completion_to_prompt=lambda p: f"Q: {p}\nA:")
    assert raw.complete(PROMPT).text == ref(sm, f"Q: {PROMPT}\nA:")


def test_chat_renders_messages_and_honours_a_custom_formatter(llm, sm):
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="you are terse"),
        ChatMessage(role=MessageRole.USER, content="hi"),
        ChatMessage(role=MessageRole.ASSISTANT, content="hello"),
        ChatMessage(role=MessageRole.USER, content=PROMPT),
    ]
    dicts = [{"role": m.role.value, "content": m.content} for m in messages]
    response = llm.chat(messages)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == ref(sm, dicts)
    custom = SteerLLM(runtime=sm, max_new_tokens=GEN, messages_to_prompt=lambda ms: "X: hi\nY:")
    assert custom.chat(messages).message.content == ref(sm, "X: hi\nY:")


def test_strict_chat_templates_get_the_portable_shape():
    """A template that refuses a system role (Gemma-, Mistral-style) failed every query engine:
    LlamaIndex's QA prompts and ``system_prompt`` add system messages. As in ChatSteer, the
    system text moves into the user turn."""
    from conftest import tiny_tokenizer
    from llama_index.core.prompts import ChatPromptTemplate

    strict = build_tiny("llama", seed=11)
    strict.tokenizer = tiny_tokenizer()
    strict.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
        "{% endif %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
        "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    )
    llm = SteerLLM(runtime=strict, max_new_tokens=GEN, system_prompt="be brief")
    folded = [{"role": "user", "content": f"be brief\n\n{PROMPT}"}]
    assert llm.complete(PROMPT).text == ref(strict, folded)
    messages = [ChatMessage(role="system", content="S"), ChatMessage(role="user", content="hi")]
    assert llm.chat(messages).message.content == ref(strict, user("S\n\nhi"))
    # the shape of LlamaIndex's QA prompts (its own is over this byte-level model's 512 positions)
    qa = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer from the context only."),
            ("user", "Context: {context_str}\n{query_str}"),
        ]
    )
    assert llm.predict(qa, context_str="c", query_str="q") == ref(
        strict, user("be brief\n\nAnswer from the context only.\n\nContext: c\nq")
    )


def test_stream_joins_to_the_same_text_with_running_totals(llm, sm, vecs):
    steering = Steering(vecs[0], 1.5)
    full = llm.complete(PROMPT, steering=steering).text
    chunks = list(llm.stream_complete(PROMPT, steering=steering))
    assert len(chunks) > 1 and "".join(c.delta for c in chunks) == full
    running = ""
    for c in chunks:
        running += c.delta
        assert c.text == running and c.raw["steering"]["expression"]
    whole = llm.complete(PROMPT, steering=steering)
    assert chunks[-1].delta == "" and chunks[-1].raw["usage"] == whole.raw["usage"]  # a last one
    assert chunks[-1].raw["finish_reason"] == whole.raw["finish_reason"] == "length"
    chat_chunks = list(llm.stream_chat([ChatMessage(content=PROMPT)], steering=steering))
    assert chat_chunks[-1].message.content == full
    assert "".join(c.delta for c in chat_chunks) == full


async def test_async_forms_match_sync(llm, vecs):
    steering = Steering(vecs[1])
    full = llm.complete(PROMPT, steering=steering).text
    assert (await llm.acomplete(PROMPT, steering=steering)).text == full
    achat = await llm.achat([ChatMessage(content=PROMPT)], steering=steering)
    assert achat.message.content == full
    pieces = [c async for c in await llm.astream_complete(PROMPT, steering=steering)]
    assert "".join(c.delta for c in pieces) == full == pieces[-1].text
    assert pieces[-1].raw["usage"]["completion_tokens"] == GEN
    chat_pieces = [c async for c in await llm.astream_chat([ChatMessage(content=PROMPT)])]
    assert chat_pieces[-1].message.content == llm.complete(PROMPT).text


async def test_async_calls_do_not_block_the_event_loop(sm):
    llm = SteerLLM(runtime=sm, max_new_tokens=60)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await llm.acomplete(PROMPT)
    done.set()
    await task
    assert ticks - before >= 3  # a blocking call would starve the ticker entirely


def test_field_call_kwargs_and_copies(llm, sm, vecs):
    a, b = Steering(vecs[0], 1.5), Steering(vecs[1], 1.5)
    plain, with_a, with_b = (ref(sm, user(PROMPT), s) for s in (None, a, b))
    assert len({plain, with_a, with_b}) == 3  # otherwise nothing below could fail
    steered = SteerLLM(runtime=sm, max_new_tokens=GEN, steering=a)
    assert steered.complete(PROMPT).text == with_a
    assert steered.complete(PROMPT, steering=b).text == with_b  # the call beats the field
    assert steered.complete(PROMPT, steering=None).text == plain  # explicit None: unsteered
    copy = llm.with_steering(b)
    assert copy.complete(PROMPT).text == with_b
    assert llm.complete(PROMPT).text == plain and llm.steering is None  # original untouched
    assert copy.steered_model is llm.steered_model


def test_coeff_and_positions_reach_resolve(llm, sm, vecs):
    v = vecs[2]
    scaled = llm.with_steering(v, coeff=2.0)
    assert scaled.complete(PROMPT).text == ref(sm, user(PROMPT), Steering(v, 2.0))
    generated = llm.with_steering(v, positions="generated")
    expected = ref(sm, user(PROMPT), Steering(v, positions="generated"))
    assert generated.complete(PROMPT).text == expected
    out = llm.complete(PROMPT, steering=v, steering_coeff=-1.0, steering_positions="prompt")
    assert out.text == ref(sm, user(PROMPT), Steering(v, -1.0, positions="prompt"))
    info = out.additional_kwargs["steering"]
    assert info["terms"][0]["coeff"] == -1.0 and info["terms"][0]["positions"] == "prompt"


async def test_gather_of_eight_differently_steered_calls_equals_single_calls(llm, sm, vecs):
    specs = [
        None,
        Steering(vecs[0]),
        Steering(vecs[1], -1.0, positions="generated"),
        Steering(vecs[2], operator="add_norm_preserving"),
        [Steering(vecs[3]), Steering(vecs[0], 0.5)],
        Steering(vecs[1], 2.0, layers=[1]),
        Steering(vecs[2], operator="ablate"),
        Steering(vecs[3], positions="prompt"),
    ]
    prompts = [f"prompt number {i}" for i in range(8)]
    refs = [ref(sm, user(p), s) for p, s in zip(prompts, specs)]
    assert len(set(refs)) >= 6

    async def streamed(p: str, s) -> str:
        return "".join([c.delta async for c in await llm.astream_complete(p, steering=s)])

    async def chatted(p: str, s) -> str:
        return (await llm.achat([ChatMessage(content=p)], steering=s)).message.content

    async def completed(p: str, s) -> str:
        return (await llm.acomplete(p, steering=s)).text

    async def copied(p: str, s) -> str:  # a steered copy, called without kwargs
        return (await llm.with_steering(s).acomplete(p)).text

    kinds = [completed, chatted, streamed, copied]
    calls = [kinds[i % 4](p, s) for i, (p, s) in enumerate(zip(prompts, specs))]
    assert await asyncio.gather(*calls) == refs


def test_generation_options_fields_and_overrides(llm, sm):
    text = ref(sm, user(PROMPT), max_new_tokens=12)
    # a stop string whose first occurrence is inside the text (the tiny model emits raw bytes)
    at = next(i for i in range(1, len(text)) if text[i] not in text[:i] and text[i] != "\ufffd")
    out = llm.complete(PROMPT, max_new_tokens=12, stop=[text[at]])
    assert out.text == text[:at] and out.raw["finish_reason"] == "stop"
    streamed = llm.stream_complete(PROMPT, max_new_tokens=12, stop=[text[at]])
    assert "".join(c.delta for c in streamed) == text[:at]
    field_stop = SteerLLM(runtime=sm, max_new_tokens=12, stop=[text[at]])
    assert field_stop.complete(PROMPT).text == text[:at]
    short = llm.complete(PROMPT, max_new_tokens=5)
    assert short.raw["usage"]["completion_tokens"] == 5 and short.raw["finish_reason"] == "length"
    sampled = [llm.complete(PROMPT, temperature=1.5, seed=7).text for _ in range(2)]
    assert sampled[0] == sampled[1] == ref(sm, user(PROMPT), temperature=1.5, seed=7)


def test_an_empty_stream_still_ends_with_a_response(llm, sm):
    first = ref(sm, user(PROMPT), max_new_tokens=3)[0]
    chunks = list(llm.stream_complete(PROMPT, stop=[first]))  # cut before the first character
    assert [(c.text, c.delta) for c in chunks] == [("", "")]
    assert [
        c.message.content for c in llm.stream_chat([ChatMessage(content=PROMPT)], stop=[first])
    ] == [""]


def test_bad_options_fail_clearly(llm, sm):
    with pytest.raises(TypeError, match="steerng"):
        llm.complete(PROMPT, steerng="dogs")
    with pytest.raises(SteeringSpecError, match="unknown preset"):
        llm.complete(PROMPT, steering="no-such-preset")
    with pytest.raises(SteeringSpecError):
        SteerLLM(runtime=sm, steering=42)
    with pytest.raises(SteeringSpecError):
        SteerLLM(runtime=sm, steering_positions="middle")
    with pytest.raises(ValueError, match="positions"):
        llm.with_steering(None, positions="middle")
    with pytest.raises(ValueError, match="text only"):
        llm.chat([ChatMessage(blocks=[ImageBlock(url="http://x/y.png")])])


def test_serialises_without_the_runtime(sm, vecs):
    llm = SteerLLM(runtime=sm, steering=[Steering(vecs[0], 2.0), "dogs:3"], steering_coeff=0.5)
    data = llm.to_dict()
    assert "runtime" not in data and data["class_name"] == "SteerLLM"
    assert data["steering"].endswith(" + dogs:3") and data["steering_coeff"] == 0.5
    llm.to_json()  # plain JSON: no tensors, no model
    payload = llm.to_payload()
    assert payload["steering"] == data["steering"] and payload["model_name"] == "tiny-llama"
    # a mapping steering prints its expression and options (not its keys joined)
    ablate = SteerLLM(runtime=sm, steering={"expression": "dogs", "operator": "ablate"})
    assert ablate.to_dict()["steering"] == "dogs [operator=ablate]"
