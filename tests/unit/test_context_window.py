"""The context window and token counts: a request that does not fit the model's window is refused
before anything runs, on every entry point, with the numbers; token counts are the model's own,
so LangChain's ``trim_messages`` really trims."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages

from actsteer import ContextWindowError, GenerationOptions, PromptError, Request
from langchain_steer import ChatSteer
from langchain_steer import SteerLLM as LangChainLLM
from llamaindex_steer import SteerLLM

LONG = "word " * 500  # over the tiny llama's 2048 positions (byte-level tokens)


@pytest.fixture
def engine(llama):
    assert llama.engine.context_window == 2048
    return llama.engine


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_prompt_over_the_window_is_refused_on_every_engine_entry_point(engine):
    request = Request(_chat(LONG), options=GenerationOptions(max_new_tokens=4))
    n = len(engine.tokenize(request.prompt))
    message = f"prompt is {n} tokens, max_new_tokens 4, window 2048"
    with pytest.raises(ContextWindowError, match=message):
        engine.generate([request])
    with pytest.raises(ContextWindowError):
        engine.submit([request])
    with pytest.raises(ContextWindowError):
        asyncio.run(engine.agenerate([request]))
    with pytest.raises(ContextWindowError):
        list(engine.stream(request))

    async def astream():
        return [piece async for piece in engine.astream(request)]

    with pytest.raises(ContextWindowError):
        asyncio.run(astream())
    ok = Request(_chat("hi"), options=GenerationOptions(max_new_tokens=4))
    assert engine.generate([ok])[0].completion_tokens > 0  # and the engine serves on


def test_prompt_and_max_new_tokens_past_the_window_are_refused(engine):
    prompt = _chat("ab " * 650)
    n = len(engine.tokenize(prompt))
    assert 1900 < n < 2040
    fits = Request(prompt, options=GenerationOptions(max_new_tokens=2048 - n))
    engine.generate([fits])
    over = Request(prompt, options=GenerationOptions(max_new_tokens=2049 - n))
    with pytest.raises(ContextWindowError, match=f"lower max_new_tokens to {2048 - n}"):
        engine.generate([over])


def test_the_adapters_refuse_an_over_long_prompt(llama):
    with pytest.raises(ContextWindowError):
        ChatSteer(runtime=llama, max_tokens=4).invoke(LONG)
    with pytest.raises(ContextWindowError):
        list(ChatSteer(runtime=llama, max_tokens=4).stream(LONG))
    with pytest.raises(ContextWindowError):
        LangChainLLM(runtime=llama, max_tokens=4).invoke(LONG)
    with pytest.raises(ContextWindowError):
        SteerLLM(runtime=llama, max_new_tokens=4).complete(LONG)


def test_an_empty_prompt_is_a_prompt_error(engine):
    with pytest.raises(PromptError, match="empty message list"):
        engine.generate([Request([])])


def test_token_counts_are_the_models_own(llama):
    chat = ChatSteer(runtime=llama)
    text = "Hello world, how are you?"
    assert chat.get_token_ids(text) == llama.tokenizer(text)["input_ids"]
    assert chat.get_num_tokens(text) == len(llama.tokenizer(text)["input_ids"]) > 0
    assert LangChainLLM(runtime=llama).get_num_tokens(text) == chat.get_num_tokens(text)
    messages = [SystemMessage("Be brief."), HumanMessage(text)]
    sent = llama.encode([{"role": "system", "content": "Be brief."}, *_chat(text)])
    assert chat.get_num_tokens_from_messages(messages) == len(sent)
    assert chat.get_num_tokens_from_messages([]) == 0


def test_trim_messages_with_the_model_as_counter_really_trims(llama):
    chat = ChatSteer(runtime=llama)
    history = [SystemMessage("Be brief.")]
    for i in range(8):
        history += [HumanMessage(f"question {i} " * 5), AIMessage(f"answer {i} " * 5)]
    history.append(HumanMessage("last question"))
    full = chat.get_num_tokens_from_messages(history)
    kept = trim_messages(
        history, max_tokens=full // 2, token_counter=chat, strategy="last", include_system=True
    )
    assert 2 <= len(kept) < len(history)
    assert kept[0] == history[0] and kept[-1] == history[-1]
    assert chat.get_num_tokens_from_messages(kept) <= full // 2
