"""``timeout=`` in the LangChain adapters is a deadline for the whole call, as in ``ChatOpenAI``:
past it the call raises ``TimeoutError`` and its row stops at the next decode step (the model is
free for the next call), on invoke, ainvoke, stream, astream and the completion LLM."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import build_tiny

from actsteer import OptionsError
from langchain_steer import ChatSteer
from langchain_steer import SteerLLM as LangChainLLM

STEP = 0.02  # seconds each forward pass is slowed by: 200 tokens take 4 s


@pytest.fixture(scope="module")
def slow():
    sm = build_tiny("llama", seed=5)
    handle = sm.model.register_forward_hook(lambda *_: time.sleep(STEP))
    yield sm
    handle.remove()


@pytest.fixture
def ended(slow):
    seen: list = []
    remove = slow.engine.observe(after=seen.extend)
    yield seen
    remove()


def _raises_soon(call) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"timeout=0\.2 s"):
        call()
    assert time.monotonic() - start < 2.0  # far from the 4 s the reply would take


def test_a_call_past_its_timeout_raises_and_its_row_stops(slow, ended):
    chat = ChatSteer(runtime=slow, max_tokens=200)
    _raises_soon(lambda: chat.invoke("hi", timeout=0.2))
    deadline = time.monotonic() + 5
    while not ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended[0].finish_reason == "cancelled" and ended[0].completion_tokens < 100
    short = chat.invoke("hi", max_tokens=3, timeout=30)  # the next call is unaffected
    assert short.content == ChatSteer(runtime=slow, max_tokens=3).invoke("hi").content


def test_every_entry_point_keeps_the_deadline(slow):
    chat = ChatSteer(runtime=slow, max_tokens=200, timeout=0.2)
    _raises_soon(lambda: chat.invoke("hi"))
    _raises_soon(lambda: list(chat.stream("hi")))
    _raises_soon(lambda: asyncio.run(chat.ainvoke("hi")))

    async def astream():
        return [c async for c in chat.astream("hi")]

    _raises_soon(lambda: asyncio.run(astream()))
    llm = LangChainLLM(runtime=slow, max_tokens=200)
    _raises_soon(lambda: llm.invoke("hi", timeout=0.2))
    _raises_soon(lambda: list(llm.stream("hi", timeout=0.2)))
    assert chat.invoke("hi", max_tokens=2, timeout=None).content is not None


def test_a_bad_timeout_is_an_options_error(slow):
    with pytest.raises(OptionsError, match="timeout must be a positive number"):
        ChatSteer(runtime=slow, max_tokens=2).invoke("hi", timeout=-1)


def test_llamaindex_keeps_the_same_deadline_on_every_entry_point(slow, ended):
    """LlamaIndex ``SteerLLM(timeout=)`` (field or per call) is the same whole-call deadline."""
    from llama_index.core.llms import ChatMessage

    from llamaindex_steer import SteerLLM

    llm = SteerLLM(runtime=slow, max_new_tokens=200, timeout=0.2)
    hi = [ChatMessage(role="user", content="hi")]
    _raises_soon(lambda: llm.complete("hi"))
    _raises_soon(lambda: llm.chat(hi))
    _raises_soon(lambda: list(llm.stream_complete("hi")))
    _raises_soon(lambda: list(llm.stream_chat(hi)))
    _raises_soon(lambda: asyncio.run(llm.acomplete("hi")))
    _raises_soon(lambda: asyncio.run(llm.achat(hi)))

    async def astream():
        return [c async for c in await llm.astream_chat(hi)]

    _raises_soon(lambda: asyncio.run(astream()))
    free = SteerLLM(runtime=slow, max_new_tokens=200)
    _raises_soon(lambda: free.complete("hi", timeout=0.2))
    assert free.complete("hi", max_new_tokens=2, timeout=30).text is not None
    with pytest.raises(OptionsError, match="timeout must be a positive number"):
        SteerLLM(runtime=slow, timeout=0)
    with pytest.raises(OptionsError, match="timeout must be a positive number"):
        free.complete("hi", timeout=-1)
