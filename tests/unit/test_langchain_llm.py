"""SteerLLM (BaseLLM) on a tiny random model: raw completion, batching, streaming, caching."""

from __future__ import annotations

import asyncio

import pytest
import torch
from conftest import build_tiny, random_vector
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import ConfigurableField

from langchain_steer import SteerLLM


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models crawl on two threads of a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sm():
    return build_tiny("gpt2", seed=4)


@pytest.fixture(scope="module")
def vec(sm):
    return random_vector(sm, [1, 2], 2.0, seed=9)


@pytest.fixture
def sizes(sm):
    """Row counts of every batched generate the engine runs."""
    seen: list[int] = []
    remove = sm.engine.observe(seen.append)
    yield seen
    remove()


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token, **kwargs) -> None:
        self.tokens.append(token)


def test_raw_completion_and_steering(sm, vec):
    llm = SteerLLM(runtime=sm, max_tokens=8)
    assert llm.invoke("Once upon") == sm.generate("Once upon", max_new_tokens=8)
    steered = llm.invoke("Once upon", steering=vec)
    assert steered == sm.generate("Once upon", vec, max_new_tokens=8) != llm.invoke("Once upon")
    assert llm.with_steering(vec).invoke("Once upon") == steered
    result = llm.generate(["Once upon"], steering=vec)
    info = result.generations[0][0].generation_info
    assert info["steering"]["terms"][0]["digest"] == vec.digest()
    assert info["usage"]["output_tokens"] == 8 and info["finish_reason"] == "length"


def test_batch_is_one_generate_equal_to_single_calls(sm, vec, sizes):
    llm = SteerLLM(runtime=sm, max_tokens=8, steering=vec)
    prompts = ["alpha", "beta gamma", "delta"]
    out = llm.batch(prompts)
    assert sizes == [3]
    assert out == [sm.generate(p, vec, max_new_tokens=8) for p in prompts]


def test_configured_rows_batch_together(sm, vec, sizes):
    llm = SteerLLM(runtime=sm, max_tokens=8)
    knob = llm.configurable_fields(steering_coeff=ConfigurableField(id="strength"))
    knob = knob.bind(steering=vec)
    coeffs = [0.0, 1.0, -1.0, 2.0]
    out = knob.batch(["x y"] * 4, [{"configurable": {"strength": c}} for c in coeffs])
    assert sizes == [4]
    assert out == [llm.invoke("x y", steering=vec, steering_coeff=c) for c in coeffs]
    assert out[0] == llm.invoke("x y") and len(set(out)) == 4


def test_stream_equals_invoke_and_reports_tokens(sm, vec):
    llm = SteerLLM(runtime=sm, max_tokens=10, steering=vec)
    ref = llm.invoke("stream me")
    rec = Tokens()
    pieces = list(llm.stream("stream me", config={"callbacks": [rec]}))
    assert "".join(pieces) == ref == "".join(rec.tokens)

    async def both():
        chunks = [p async for p in llm.astream("stream me")]
        return "".join(chunks), await llm.ainvoke("stream me"), await llm.abatch(["stream me"] * 2)

    streamed, single, batch = asyncio.run(both())
    assert streamed == single == ref and batch == [ref, ref]


def test_cache_keys_on_per_call_steering(sm, vec, sizes):
    llm = SteerLLM(runtime=sm, max_tokens=8, cache=InMemoryCache())
    plain = llm.invoke("cache me")
    steered = llm.invoke("cache me", steering=vec)
    assert steered != plain and sizes == [1, 1]
    assert llm.invoke("cache me") == plain and llm.invoke("cache me", steering=vec) == steered
    assert llm.invoke("cache me", max_tokens=4) != plain
    assert sizes == [1, 1, 1]
    # the max_new_tokens alias is keyed as max_tokens: a short answer is not served for later
    short = SteerLLM(runtime=sm, max_tokens=8, cache=InMemoryCache())
    assert short.invoke("cache me", max_new_tokens=2) != short.invoke("cache me") == plain


def test_a_configured_model_generates_with_that_model(sm, tmp_path):
    """``configurable_fields(model=...)``: LangChain rebuilds from the default's fields, its
    loaded runtime among them, which kept generating with the old model under the new name."""
    other = build_tiny("gpt2", seed=5)
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    llm = SteerLLM(runtime=sm, max_tokens=6)
    knob = llm.configurable_fields(model=ConfigurableField(id="model"))
    switched = knob.invoke("hello", config={"configurable": {"model": str(tmp_path / "other")}})
    assert switched == SteerLLM(runtime=other, max_tokens=6).invoke("hello")
    assert switched != llm.invoke("hello")
    assert knob.invoke("hello") == llm.invoke("hello")
