"""Per-row steering through batch, abatch, threads and asyncio: every output equals its single-call
reference, and a batch is one batched generate (tiny random model)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import build_tiny, random_vector
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import ConfigurableField

from actsteer import Steering, SteeringSpecError
from langchain_steer import ChatSteer, SteerLLM

N = 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models crawl on two threads of a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sm():
    return build_tiny("qwen2", seed=2)


@pytest.fixture(scope="module")
def settings(sm):
    a, b, c = (random_vector(sm, [1, 2], 2.0, seed=s) for s in (1, 2, 3))
    return [None, a, Steering(b, -1.5, positions="generated"), [Steering(c), Steering(a, 0.5)]]


@pytest.fixture(scope="module")
def inputs():
    return [f"request number {i}" for i in range(N)]


@pytest.fixture(scope="module")
def references(sm, settings, inputs):
    chat = ChatSteer(runtime=sm, max_tokens=8)
    refs = [chat.invoke(x, steering=settings[i % 4]).content for i, x in enumerate(inputs)]
    assert len(set(refs[:4])) == 4  # the settings really differ, so mix-ups would show
    return refs


@pytest.fixture
def calls(sm):
    """Batch sizes of every generate the engine runs (sync and async)."""
    sizes: list[int] = []
    remove = sm.engine.observe(sizes.append)
    yield sizes
    remove()


@pytest.fixture
def knob(sm):
    chat = ChatSteer(runtime=sm, max_tokens=8)
    return chat.configurable_fields(steering=ConfigurableField(id="format_steering"))


def _configs(settings, n=N, **extra):
    return [{"configurable": {"format_steering": settings[i % 4]}, **extra} for i in range(n)]


class Runs(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list = []
        self.ends: list = []

    def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs) -> None:
        self.starts.append(run_id)

    def on_llm_end(self, response, *, run_id, **kwargs) -> None:
        self.ends.append(run_id)


def test_batch_with_per_row_steering_is_one_generate(knob, settings, inputs, references, calls):
    handlers = [Runs() for _ in inputs]
    configs = [{**c, "callbacks": [h]} for c, h in zip(_configs(settings), handlers)]
    out = knob.batch(inputs, configs)
    assert [m.content for m in out] == references
    assert calls == [N]
    assert all(len(h.starts) == 1 and h.starts == h.ends for h in handlers)
    assert len({h.starts[0] for h in handlers}) == N  # every row is its own traced run


async def test_abatch_with_per_row_steering_is_one_generate(
    knob, settings, inputs, references, calls
):
    out = await knob.abatch(inputs, _configs(settings))
    assert [m.content for m in out] == references
    assert calls == [N]


def test_max_concurrency_chunks_the_batch(knob, settings, inputs, references, calls):
    out = knob.batch(inputs, _configs(settings, max_concurrency=5))
    assert [m.content for m in out] == references
    assert calls == [5, 5, 2]


def test_plain_batch_and_bound_steering(sm, settings, inputs, references, calls):
    chat = ChatSteer(runtime=sm, max_tokens=8)
    rows = inputs[1::4]
    assert [m.content for m in chat.bind(steering=settings[1]).batch(rows)] == references[1::4]
    assert [m.content for m in chat.batch(rows, steering=settings[1])] == references[1::4]
    assert calls == [3, 3]


def test_alternatives_batch_per_row(sm, settings, inputs, references, calls):
    chat = ChatSteer(runtime=sm, max_tokens=8)
    alts = chat.configurable_alternatives(
        ConfigurableField(id="style"),
        default_key="plain",
        **{f"s{i}": chat.with_steering(settings[i]) for i in range(1, 4)},
    )
    keys = ["plain", "s1", "s2", "s3"]
    configs = [{"configurable": {"style": keys[i % 4]}} for i in range(N)]
    assert [m.content for m in alts.batch(inputs, configs)] == references
    assert calls == [N]


def test_threads_and_tasks_match_references(sm, settings, inputs, references):
    chat = ChatSteer(runtime=sm, max_tokens=8)

    def call(i: int) -> str:
        return chat.invoke(inputs[i], steering=settings[i % 4]).content

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(call, range(N))) == references

    async def gather() -> list[str]:
        msgs = await asyncio.gather(
            *(chat.ainvoke(x, steering=settings[i % 4]) for i, x in enumerate(inputs))
        )
        return [m.content for m in msgs]

    assert asyncio.run(gather()) == references


def test_return_exceptions_isolates_a_bad_row(knob, settings, inputs, references, calls):
    configs = _configs(settings)
    configs[5] = {"configurable": {"format_steering": "file:/nonexistent/vector.safetensors"}}
    configs[2] = {"configurable": {"format_steering": "jsno"}}  # refused building the model
    out = knob.batch(inputs, configs, return_exceptions=True)
    assert isinstance(out[5], Exception)
    assert isinstance(out[2], SteeringSpecError) and "did you mean" in str(out[2])
    good = [i for i in range(N) if i not in (2, 5)]
    assert [out[i].content for i in good] == [references[i] for i in good]
    assert calls == [N - 2]
    with pytest.raises(SteeringSpecError, match="unknown preset 'jsno'"):  # the first in order
        knob.batch(inputs, configs)


async def test_async_return_exceptions(knob, settings, inputs, references):
    configs = _configs(settings)
    configs[0] = {"configurable": {"format_steering": "file:/nonexistent/vector.safetensors"}}
    configs[3] = {"configurable": {"format_steering": "json:4 +"}}
    out = await knob.abatch(inputs, configs, return_exceptions=True)
    assert isinstance(out[0], Exception) and isinstance(out[3], SteeringSpecError)
    assert [m.content for i, m in enumerate(out) if i not in (0, 3)] == [
        r for i, r in enumerate(references) if i not in (0, 3)
    ]


def test_cached_rows_skip_the_batch(sm, settings, inputs, calls):
    chat = ChatSteer(runtime=sm, max_tokens=8, cache=InMemoryCache())
    chat.batch(inputs[:3], steering=settings[2])
    out = chat.batch(inputs[:6], steering=settings[2])
    assert calls == [3, 3]  # the second batch generated only the three new rows
    fresh = ChatSteer(runtime=sm, max_tokens=8)
    assert [m.content for m in out] == [
        fresh.invoke(x, steering=settings[2]).content for x in inputs[:6]
    ]


def test_batch_generates_on_the_one_generation_thread(sm, knob, settings, inputs):
    """torch on CPU keeps one OpenMP team per thread and a second team slows both: whichever
    thread calls batch, the generate runs on actsteer's generation thread."""
    threads: list[str] = []
    remove = sm.engine.observe(lambda rows: threads.append(threading.current_thread().name))
    try:
        knob.batch(inputs[:4], _configs(settings, 4))
        t = threading.Thread(target=knob.batch, args=(inputs[:4], _configs(settings, 4)))
        t.start()
        t.join(60)
    finally:
        remove()
    assert threads == ["actsteer-generate"] * 2


def test_a_failing_generate_fails_every_row(sm, knob, settings, inputs):
    def broken(rows: int) -> None:
        raise RuntimeError("device lost")

    remove = sm.engine.observe(broken)
    try:
        out = knob.batch(inputs[:4], _configs(settings, 4), return_exceptions=True)
        assert [str(e) for e in out] == ["device lost"] * 4
        with pytest.raises(RuntimeError, match="device lost"):
            knob.batch(inputs[:4], _configs(settings, 4))
    finally:
        remove()


class Interrupt(BaseException):
    """Stands in for KeyboardInterrupt arriving while the batch generates."""


def test_an_interrupted_batch_releases_every_row(sm, knob, settings, inputs):
    def interrupted(rows: int) -> None:
        raise Interrupt

    remove = sm.engine.observe(interrupted)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            knob.batch(inputs[:4], _configs(settings, 4))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the batch hung after an interrupt"
    assert len(outcome) == 1 and isinstance(outcome[0], Interrupt)
    remove()
    assert len(knob.batch(inputs[:2], _configs(settings, 2))) == 2  # the model still works


def test_a_configurable_llm_batch_with_a_cache_skips_only_the_cached_rows(
    sm, settings, inputs, calls
):
    """A configurable ``SteerLLM`` batch (a steering per row) looks each row up as
    ``BaseLLM.generate`` would: the rows the cache cannot answer still generate as one batch.
    They used to run one by one whenever any cache was set."""
    llm = SteerLLM(runtime=sm, max_tokens=8, cache=InMemoryCache())
    knob = llm.configurable_fields(steering=ConfigurableField(id="format_steering"))
    knob.batch(inputs[:2], _configs(settings, 2))
    calls.clear()
    out = knob.batch(inputs[:5], _configs(settings, 5))
    assert calls == [3]
    fresh = SteerLLM(runtime=sm, max_tokens=8)
    assert out == [fresh.invoke(x, steering=settings[i % 4]) for i, x in enumerate(inputs[:5])]
