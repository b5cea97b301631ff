"""The context window and token counts: a request that does not fit the model's window is refused
before anything runs, on every entry point, with the numbers; token counts are the model's own,
so LangChain's ``trim_messages`` really trims."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages

from actsteer import ContextWindowError, GenerationOptions, OptionsError, PromptError, Request
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
    ok = Request(_chat("hi"), options=GenerationOptions(max_new_tokens=4))
    refused, served = engine.submit([request, ok])  # the row alone fails, in its future
    with pytest.raises(ContextWindowError):
        refused.result()
    assert served.result().completion_tokens > 0
    with pytest.raises(ContextWindowError):
        asyncio.run(engine.agenerate([request]))
    with pytest.raises(ContextWindowError):
        list(engine.stream(request))

    async def astream():
        return [piece async for piece in engine.astream(request)]

    with pytest.raises(ContextWindowError):
        asyncio.run(astream())
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


def test_an_over_long_row_of_a_batch_fails_alone(llama):
    """The other rows of a batch go on: with ``return_exceptions=True`` the row over the window
    comes back as its ContextWindowError, in place."""
    from langchain_core.runnables import ConfigurableField

    chat = ChatSteer(runtime=llama, max_tokens=4)
    want = [chat.invoke("hi").content, chat.invoke("yo").content]
    configurable = chat.configurable_fields(steering=ConfigurableField(id="steering"))
    for model in (chat, configurable):
        out = model.batch(["hi", LONG, "yo"], return_exceptions=True)
        assert isinstance(out[1], ContextWindowError)
        assert [out[0].content, out[2].content] == want
        out = asyncio.run(model.abatch(["hi", LONG, "yo"], return_exceptions=True))
        assert isinstance(out[1], ContextWindowError)
        assert [out[0].content, out[2].content] == want
    with pytest.raises(ContextWindowError):
        chat.batch(["hi", LONG])


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


# -- opt-in truncation (truncate="left" / "drop_oldest_messages") ------------------------------
def _history(turns: int) -> list[dict[str, str]]:
    chat = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        chat += [
            {"role": "user", "content": f"question {i} " * 20},
            {"role": "assistant", "content": f"answer {i} " * 20},
        ]
    return [*chat, {"role": "user", "content": "last question"}]


def test_drop_oldest_messages_keeps_the_system_and_the_newest_turns_that_fit(engine):
    history = _history(12)  # ~ 12 * 2 * 220 bytes: over 2048
    assert len(engine.tokenize(history)) > 2048
    options = GenerationOptions(max_new_tokens=16)
    g = engine.generate([Request(history, options=options, truncate="drop_oldest_messages")])[0]
    # the kept chat: the system turn, then whole turns from a user turn on, as many as fit
    kept = None
    for start in range(1, len(history), 2):
        candidate = [history[0], *history[start:]]
        if len(engine.tokenize(candidate)) + 16 <= 2048:
            kept = candidate
            break
    assert kept is not None and len(kept) < len(history)
    assert len(engine.tokenize([history[0], *history[start - 2 :]])) + 16 > 2048  # one more: not
    alone = engine.generate([Request(kept, options=options)])[0]
    assert g.token_ids == alone.token_ids and g.text == alone.text
    assert g.prompt_tokens == len(engine.tokenize(kept))
    assert g.truncated_tokens == len(engine.tokenize(history)) - g.prompt_tokens
    # a batch row truncates exactly as alone, beside a row that fits
    short = Request(_chat("hi"), options=options)
    both = engine.generate(
        [short, Request(history, options=options, truncate="drop_oldest_messages")]
    )
    assert both[1].token_ids == g.token_ids and both[0].truncated_tokens == 0
    streamed = list(
        engine.stream(Request(history, options=options, truncate="drop_oldest_messages"))
    )
    assert streamed[-1].token_ids == g.token_ids
    assert streamed[-1].truncated_tokens == g.truncated_tokens


def test_truncate_left_keeps_the_prompts_last_tokens(engine):
    text = "abcdefghij" * 250  # 2500 byte-level tokens, one per character
    options = GenerationOptions(max_new_tokens=8)
    g = engine.generate([Request(text, options=options, truncate="left")])[0]
    assert g.prompt_tokens == 2048 - 8 and g.truncated_tokens == 2500 - (2048 - 8)
    alone = engine.generate([Request(text[-(2048 - 8) :], options=options)])[0]
    assert g.token_ids == alone.token_ids
    fits = engine.generate([Request("abc", options=options, truncate="left")])[0]
    assert fits.truncated_tokens == 0 and fits.prompt_tokens == 3


def test_truncation_that_cannot_fit_or_does_not_apply_is_refused(engine):
    huge_last = [*_history(1), {"role": "user", "content": "x " * 1500}]
    request = Request(
        huge_last, options=GenerationOptions(max_new_tokens=4), truncate="drop_oldest_messages"
    )
    with pytest.raises(
        ContextWindowError, match="even with only the system turns and the last user turn"
    ):
        engine.generate([request])
    with pytest.raises(OptionsError, match="needs chat messages"):
        Request("raw text", truncate="drop_oldest_messages")
    with pytest.raises(OptionsError, match="truncate must be None or one of"):
        Request(_chat("hi"), truncate="right")
    with pytest.raises(ContextWindowError, match="leaves no room"):  # nothing could be kept
        engine.generate(
            [Request("x" * 3000, options=GenerationOptions(max_new_tokens=2048), truncate="left")]
        )


def test_the_adapters_truncate_on_request_and_say_so(llama):
    history = [SystemMessage("Be brief.")]
    for i in range(12):
        history += [HumanMessage(f"question {i} " * 20), AIMessage(f"answer {i} " * 20)]
    history.append(HumanMessage("last question"))
    chat = ChatSteer(runtime=llama, max_tokens=8, truncate="drop_oldest_messages")
    reply = chat.invoke(history)
    cut = reply.response_metadata["truncated_tokens"]
    assert cut > 0 and reply.usage_metadata["input_tokens"] + 8 <= 2048
    streamed = None
    for chunk in chat.stream(history):
        streamed = chunk if streamed is None else streamed + chunk
    assert (
        streamed.content == reply.content and streamed.response_metadata["truncated_tokens"] == cut
    )
    per_call = ChatSteer(runtime=llama, max_tokens=8).invoke(
        history, truncate="drop_oldest_messages"
    )
    assert per_call.content == reply.content
    with pytest.raises(ContextWindowError):  # the default refuses
        ChatSteer(runtime=llama, max_tokens=8).invoke(history)
    llm = LangChainLLM(runtime=llama, max_tokens=8, truncate="left")
    out = llm.generate(["abcdefghij" * 250]).generations[0][0]
    assert out.generation_info["truncated_tokens"] == 2500 - 2040
    from llama_index.core.llms import ChatMessage

    li = SteerLLM(runtime=llama, max_new_tokens=8, truncate="drop_oldest_messages")
    messages = [
        ChatMessage(
            role=m.type.replace("human", "user").replace("ai", "assistant"), content=m.content
        )
        for m in history
    ]
    answer = li.chat(messages)
    assert answer.raw["truncated_tokens"] > 0
    assert answer.message.content == reply.content
