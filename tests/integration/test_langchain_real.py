"""ChatSteer and SteerLLM on the embedded SmolLM2-135M-Instruct: presets steer real text, mixed
batches equal single calls, streaming equals invoke, structured output parses real replies."""

from __future__ import annotations

import pytest
import torch
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField

from actsteer import SteeredModel
from langchain_steer import ChatSteer, SteerLLM

pytestmark = pytest.mark.integration
GEN = {"max_tokens": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 135M model decodes faster on one thread of a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chat() -> ChatSteer:
    return ChatSteer(runtime=SteeredModel.shared(None), **GEN)


def test_presets_steer_the_real_model(chat):
    question = "What do you like to do on weekends?"
    plain = chat.invoke(question)
    loving = chat.invoke(question, steering="love:2")
    assert loving.content != plain.content
    assert chat.invoke(question, steering="love:2", steering_coeff=0.0).content == plain.content
    assert loving.response_metadata["steering"]["expression"].startswith("love:2")
    assert loving.response_metadata["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_mixed_steering_batch_equals_single_calls(chat):
    short = ChatSteer(runtime=chat.runtime, max_tokens=10)
    knob = short.configurable_fields(steering=ConfigurableField(id="format_steering"))
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | knob
    settings = [None, "dogs", "love:2", "formal"]  # each visibly steers this question
    configs = [{"configurable": {"format_steering": s}} for s in settings]
    batched = [
        m.content for m in chain.batch([{"q": "Describe your ideal afternoon."}] * 4, configs)
    ]
    singles = [short.invoke("Describe your ideal afternoon.", steering=s).content for s in settings]
    assert batched == singles
    assert len(set(batched)) == 4


def test_stream_equals_invoke_with_a_multi_token_stop(chat):
    messages = [("system", "You are terse."), ("human", "Name three colours.")]
    full = chat.invoke(messages, max_tokens=24).content
    words = full.split()
    assert len(words) >= 3
    stop = " ".join(words[1:3])  # two words: several tokens
    cut = chat.invoke(messages, max_tokens=24, stop=[stop])
    assert (
        cut.content == full[: full.find(stop)] and cut.response_metadata["finish_reason"] == "stop"
    )
    assert "".join(c.content for c in chat.stream(messages, max_tokens=24, stop=[stop])) == (
        cut.content
    )


async def test_async_stream_and_llm_on_the_real_model(chat):
    ref = chat.invoke("Say hello.", steering="dogs")
    pieces = [c async for c in chat.astream("Say hello.", steering="dogs")]
    assert "".join(c.content for c in pieces) == ref.content
    assert pieces[-1].usage_metadata == ref.usage_metadata
    llm = SteerLLM(runtime=chat.runtime, max_tokens=8)
    prompts = ["The weather today is", "My favourite food is"]
    assert await llm.abatch(prompts, steering="love:2") == [
        llm.invoke(p, steering="love:2") for p in prompts
    ]
