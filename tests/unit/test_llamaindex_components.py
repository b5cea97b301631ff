"""SteerLLM inside LlamaIndex machinery on a tiny random model: instrumentation events, predict,
query engines (which pass no call kwargs) and structured output. Expected texts come from the
engine called directly with the messages LlamaIndex actually sent (read off the events)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import pytest
import torch
from conftest import COMMON, TINY_CONFIGS, random_vector, tiny_tokenizer
from llama_index.core import Document, MockEmbedding, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
)
from llama_index.core.prompts import PromptTemplate
from pydantic import BaseModel, Field
from transformers import AutoConfig, AutoModelForCausalLM

from actsteer import SteeredModel, Steering
from actsteer.core.steering import steering_info
from llamaindex_steer import SteerLLM
from llamaindex_steer.structured import ExampleJSONParser

GEN = 10
#: What LlamaIndex's PydanticOutputParser raises on bad output (no JSON found / invalid object).
PARSE_ERROR = r"Could not extract json string|validation errors? for City"


class Recorder(BaseEventHandler):
    """Keeps every instrumentation event it is sent."""

    events: list[BaseEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class City(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def sm() -> SteeredModel:
    """A tiny llama with room for LlamaIndex's QA prompts (512 positions are too few)."""
    spec = {k: v for k, v in TINY_CONFIGS["llama"].items() if k != "model_type"}
    config = AutoConfig.for_model("llama", **COMMON, **{**spec, "max_position_embeddings": 4096})
    config.initializer_range = 0.2
    torch.manual_seed(4)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return SteeredModel.from_model(model, tiny_tokenizer(), name="tiny-llama-4k")


@pytest.fixture(scope="module")
def vec(sm):
    return random_vector(sm, [1, 2], 2.0, seed=11)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(rec)
    try:
        yield rec
    finally:
        dispatcher.event_handlers.remove(rec)


def as_dicts(messages) -> list[dict[str, str]]:
    return [{"role": m.role.value, "content": m.content} for m in messages]


def test_events_carry_field_and_call_steering(sm, vec, recorder):
    llm = SteerLLM(runtime=sm, max_new_tokens=GEN, steering="dogs:2")
    call = Steering(vec, 1.5)
    llm.chat([ChatMessage(content="hi")], steering=call)
    (start,) = recorder.of(LLMChatStartEvent)
    assert start.model_dict["steering"] == "dogs:2"  # the configured field
    assert start.additional_kwargs["steering"] is call  # the per-call override
    (end,) = recorder.of(LLMChatEndEvent)
    applied = steering_info(sm.resolve(call))
    assert end.response.raw["steering"] == applied == end.response.additional_kwargs["steering"]
    assert end.response.raw["usage"]["completion_tokens"] > 0


async def test_streams_and_async_calls_report_steering_at_their_end(sm, vec, recorder):
    llm = SteerLLM(runtime=sm, max_new_tokens=GEN).with_steering(vec, coeff=0.5)
    expected = steering_info(sm.resolve(vec, coeff=0.5))
    assert [c.delta for c in llm.stream_chat([ChatMessage(content="hi")])]
    await llm.acomplete("hi")
    async for _ in await llm.astream_complete("hi"):
        pass
    ends = recorder.of(LLMChatEndEvent) + recorder.of(LLMCompletionEndEvent)
    assert len(ends) == 3
    assert all(e.response.raw["steering"] == expected for e in ends)
    assert expected["terms"][0]["coeff"] == 0.5


def test_predict_uses_the_chat_template_and_the_copy_steering(sm, vec, recorder):
    steered = SteerLLM(runtime=sm, max_new_tokens=GEN).with_steering(vec)
    out = steered.predict(PromptTemplate("Say {word}."), word="hello")
    (start,) = recorder.of(LLMChatStartEvent)  # a chat model: predict goes through chat()
    assert out == sm.generate(as_dicts(start.messages), vec, max_new_tokens=GEN)
    assert out != sm.generate(as_dicts(start.messages), None, max_new_tokens=GEN)


def test_query_engine_answers_with_the_steered_copy(sm, vec, recorder):
    docs = [
        Document(text="The harbour bakery opens at seven and sells rye bread."),
        Document(text="The ferry to the island leaves every hour from pier two."),
    ]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    llm = SteerLLM(runtime=sm, max_new_tokens=GEN)
    steering = Steering(vec, positions="generated")
    answers = {}
    for name, model in (("plain", llm), ("steered", llm.with_steering(steering))):
        engine = index.as_query_engine(llm=model, similarity_top_k=2)
        response = engine.query("When does the bakery open?")
        assert len(response.source_nodes) == 2
        answers[name] = (response.response, recorder.of(LLMChatStartEvent)[-1].messages)
    for name, spec in (("plain", None), ("steered", steering)):
        text, messages = answers[name]
        assert "rye bread" in messages[-1].content  # the retrieved context reached the model
        assert text == sm.generate(as_dicts(messages), spec, max_new_tokens=GEN)
    assert answers["plain"][0] != answers["steered"][0]
    expressions = [e.response.raw["steering"]["expression"] for e in recorder.of(LLMChatEndEvent)]
    assert expressions[0] is None and "positions=generated" in expressions[1]


async def test_structured_failures_are_parsing_errors_and_carry_json_steering(sm, vec, recorder):
    llm = SteerLLM(runtime=sm, max_new_tokens=GEN, structured_steering=vec)
    prompt = PromptTemplate("Which city is the capital of {country}?")
    with pytest.raises(ValueError, match=PARSE_ERROR):  # JSON by grammar, cut off at GEN tokens
        llm.structured_predict(City, prompt, country="France")
    with pytest.raises(ValueError, match=PARSE_ERROR):
        await llm.astructured_predict(City, prompt, country="France")
    with pytest.raises(ValueError, match=PARSE_ERROR):
        llm.as_structured_llm(City).chat([ChatMessage(content="Capital of Peru?")])
    with pytest.raises(ValueError, match=PARSE_ERROR):
        llm.structured_predict(City, prompt, llm_kwargs={"extra_steering": None}, country="Peru")
    infos = [e.response.raw["steering"] for e in recorder.of(LLMChatEndEvent)]
    assert len(infos) == 4
    assert [i["terms"][0]["digest"] if i["terms"] else None for i in infos] == [
        vec.digest()
    ] * 3 + [None]
    first = recorder.of(LLMChatStartEvent)[0]
    assert first.messages[-1].content.endswith('{"name": "...", "country": "..."}')  # by example
    # the structured steering is added to, not instead of, the configured steering
    both = llm.with_steering(Steering(vec, 0.5))
    with pytest.raises(ValueError, match=PARSE_ERROR):
        both.structured_predict(City, prompt, country="Chile")
    terms = recorder.of(LLMChatEndEvent)[-1].response.raw["steering"]["terms"]
    assert [t["coeff"] for t in terms] == [0.5, 1.0]


class Trip(BaseModel):
    city: City
    days: int
    budget: float | None = None
    mode: Literal["train", "car"] = "train"
    stops: list[str] = []


def test_example_parser_shows_an_object_to_fill_and_parses_like_llamaindex():
    parser = ExampleJSONParser(Trip)
    example = json.loads(parser.example())
    assert example == {
        "city": {"name": "...", "country": "..."},
        "days": 0,
        "budget": 0.0,
        "mode": "train",
        "stops": [],
    }
    assert parser.format("Plan a trip.").endswith(parser.example())
    reply = 'Sure! {"city": {"name": "Lyon", "country": "France"}, "days": 3} Enjoy.'
    assert parser.parse(reply) == Trip(city=City(name="Lyon", country="France"), days=3)
    with pytest.raises(ValueError, match=r"validation errors? for Trip"):
        parser.parse('{"city": "Lyon"}')


async def test_structured_streams_carry_the_json_steering(sm, vec, recorder):
    llm = SteerLLM(runtime=sm, max_new_tokens=GEN, structured_steering=vec)
    prompt = PromptTemplate("Which city is the capital of {country}?")
    list(llm.stream_structured_predict(City, prompt, country="Spain"))  # partials may be none
    async for _ in await llm.astream_structured_predict(City, prompt, country="Italy"):
        pass
    ends = recorder.of(LLMChatEndEvent)
    assert len(ends) == 2
    assert all(e.response.raw["steering"]["terms"][0]["digest"] == vec.digest() for e in ends)
    assert all(e.response.raw["usage"]["completion_tokens"] > 0 for e in ends)  # streamed usage
