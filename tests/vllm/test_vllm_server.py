"""Steering through a real vLLM server equals steering in-process, token for token (greedy,
fp32): single requests, a mixed batch whose unsteered fillers finish early, requests that meet
the prefix cache, 200 concurrent mixed requests, in eager and in compiled mode; a bad spec is a
400 and the server serves on; the remote adapters keep their features."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

import openai
import pytest
from langchain_core.runnables import ConfigurableField

from actsteer import (
    ContextWindowError,
    GenerationOptions,
    Request,
    Steering,
    SteeringSpecError,
    SteeringVector,
)
from actsteer.cli import launch
from actsteer.constrain import Constraint
from actsteer.prompts import fit
from actsteer.remote import remote_engine
from langchain_steer import ChatSteer
from langchain_steer import SteerLLM as LangChainLLM
from llamaindex_steer import SteerLLM

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SETTINGS = [None, "love:2", "dogs", "french", "0.5*love - formal"]
QUESTIONS = [
    "Describe your weekend.",
    "What should I cook tonight?",
    "Tell me about the sea.",
    "How do I learn to draw?",
    "Why is the sky blue?",
    "Write one line about autumn.",
    "What is a good name for a cat?",
    "Give me a tip for sleeping well.",
]
GEN = GenerationOptions(max_new_tokens=16)
#: Steering beyond plain addition, as mappings of ``Steering`` fields (``file:`` names the
#: server's vectors folder; ``local`` points them at the same files for in-process runs).
OPERATORS = [
    {"expression": "love", "operator": "ablate"},
    {"expression": "love:2", "operator": "add_norm_preserving"},
    {"expression": "dogs:4", "positions": "actadd"},
    {"expression": "file:mine:8", "positions": "actadd"},
    "file:front:4",  # a per-position ActAdd vector: at the prompt's first positions
    [{"expression": "formal", "operator": "ablate", "coeff": 2.0}, "dogs"],
]


def local(setting, vectors: Path):
    """``setting`` with each ``file:NAME`` as the path of that vector in ``vectors``."""
    if isinstance(setting, list):
        return [local(s, vectors) for s in setting]
    if isinstance(setting, dict):
        return {**setting, "expression": local(setting["expression"], vectors)}
    if isinstance(setting, str) and "file:" in setting:
        name = setting.split("file:")[1].split(":")[0]
        return setting.replace(f"file:{name}", f"file:{vectors / name}.safetensors")
    return setting


def chat(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


@pytest.fixture(scope="module")
def engine(server):
    return remote_engine(server, MODEL)


def local_ids(real, prompts, steerings, options=GEN) -> list[tuple[int, ...]]:
    gens = real.generate_batch_detailed(
        prompts,
        list(steerings),
        max_new_tokens=options.max_new_tokens,
        stop=list(options.stop),
    )
    return [g.token_ids for g in gens]


def test_single_requests_equal_local(engine, real, vectors):
    prompts = [chat(q) for q in QUESTIONS[:2]] + ["I think my neighbour is"]
    mine = Steering(SteeringVector.load(vectors / "mine.safetensors"), 2.0)
    for s in [*SETTINGS, "file:mine:2"]:
        got = [engine.generate([Request(p, engine.resolve(s), GEN)])[0] for p in prompts]
        want = mine if s == "file:mine:2" else s
        assert [g.token_ids for g in got] == local_ids(real, prompts, [want] * 3), s
        assert all(g.completion_tokens == len(g.token_ids) for g in got)


def test_ablation_norm_preserving_and_actadd_equal_local(engine, real, vectors):
    """Operators other than addition run the local hooks' own code on the server's stream:
    single requests, and all of them at once in a batch beside plain and unsteered rows."""
    prompts = [chat(q) for q in QUESTIONS[:2]] + ["I think my neighbour is"]
    plain = local_ids(real, prompts, [None] * 3)
    for s in OPERATORS:
        got = [engine.generate([Request(p, engine.resolve(s), GEN)])[0] for p in prompts]
        want = local_ids(real, prompts, [local(s, vectors)] * 3)
        assert [g.token_ids for g in got] == want, s
        assert want != plain, s  # each one steers
    mixed = [*OPERATORS, "love:2", None]
    rows = [(chat(q), mixed[i % len(mixed)]) for i, q in enumerate(QUESTIONS)]
    rows += [(chat(q), OPERATORS[(i + 2) % len(OPERATORS)]) for i, q in enumerate(QUESTIONS)]
    futures = engine.submit([Request(p, engine.resolve(s), GEN) for p, s in rows])
    want = [local_ids(real, [p], [local(s, vectors)])[0] for p, s in rows]
    assert [f.result().token_ids for f in futures] == want


def test_a_mixed_batch_with_early_finishers_equals_local(engine, real):
    short = GenerationOptions(max_new_tokens=3)
    rows = [(chat(q), SETTINGS[i % 5], GEN) for i, q in enumerate(QUESTIONS)]
    rows += [(chat(q), None, short) for q in QUESTIONS]  # unsteered fillers that end early
    rows += [(chat(q), SETTINGS[(i + 2) % 5], GEN) for i, q in enumerate(QUESTIONS[:4])]
    random.Random(0).shuffle(rows)
    assert len(rows) >= 16
    futures = engine.submit([Request(p, engine.resolve(s), o) for p, s, o in rows])
    got = [f.result().token_ids for f in futures]
    want = [local_ids(real, [p], [s], o)[0] for p, s, o in rows]
    assert got == want


def test_a_steered_request_after_the_same_unsteered_prompt_is_still_steered(engine, real):
    long = chat("Please tell me, in a few words and without any preamble, " + QUESTIONS[2] * 3)
    assert len(real.encode(long)) > 48  # prefilled in chunks by this server
    plain = engine.generate([Request(long, (), GEN)])[0]
    steered = engine.generate([Request(long, engine.resolve("dogs:2"), GEN)])[0]
    again = engine.generate([Request(long, (), GEN)])[0]  # and back: no steered KV reused
    assert plain.token_ids == again.token_ids == local_ids(real, [long], [None])[0]
    assert steered.token_ids == local_ids(real, [long], ["dogs:2"])[0] != plain.token_ids


def test_a_follow_up_prompt_holding_a_steered_reply_reuses_none_of_its_kv(server):
    """vLLM caches blocks of generated tokens too. Under steering at prompt (or generated)
    positions, a prompt that contains an earlier reply must be computed with those tokens as
    *prompt* tokens: its answer equals the same request on a cache of its own (a user salt).
    (Without the prompt length in the salt, the prompt-positions case answered differently.)"""
    client = openai.OpenAI(base_url=server, api_key="EMPTY")

    def complete(prompt, n, xargs, **extra):
        reply = client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=n,
            temperature=0,
            extra_body={"vllm_xargs": xargs, "return_token_ids": True, **extra},
        )
        extra = reply.choices[0].model_extra or {}
        return list(extra["prompt_token_ids"]), list(extra["token_ids"])

    for where in ("prompt", "generated"):
        xargs = {"actsteer": json.dumps({"expression": "love:4", "positions": where})}
        prompt, reply = complete("Once upon a time", 200, xargs, ignore_eos=True)
        follow_up = prompt + reply  # its first cache block holds KV of the reply
        cached = complete(follow_up, 16, xargs)[1]
        fresh = complete(follow_up, 16, xargs, cache_salt=f"a-cache-of-its-own-{where}")[1]
        assert cached == fresh, where


def test_a_bad_spec_is_a_400_and_the_server_serves_on(engine, server):
    client = openai.OpenAI(base_url=server, api_key="EMPTY")
    bad = ("jsno", "love:", "file:missing", "file:/etc/passwd", "json@500", '{"expression": 3}')
    for spec in bad:
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(
                model=MODEL,
                prompt="Hi",
                max_tokens=4,
                extra_body={"vllm_xargs": {"actsteer": spec}},
            )
        assert caught.value.status_code == 400 and "actsteer" in str(caught.value)
    with pytest.raises(SteeringSpecError, match="server refused"):  # only the server has files
        ChatSteer(base_url=server, model=MODEL).invoke("Hi", steering="file:missing.safetensors")
    assert engine.generate([Request("Hi", engine.resolve("love"), GEN)])[0].completion_tokens


def test_200_concurrent_mixed_requests_are_not_contaminated(engine, real):
    prompts = [chat(q) for q in QUESTIONS]
    refs = {
        (i, s): ids
        for s in SETTINGS[:4]
        for i, ids in enumerate(local_ids(real, prompts, [s] * len(prompts)))
    }
    rng = random.Random(1)
    picks = [(rng.randrange(len(prompts)), rng.choice(SETTINGS[:4])) for _ in range(200)]
    futures = engine.submit([Request(prompts[i], engine.resolve(s), GEN) for i, s in picks])
    wrong = [pick for pick, f in zip(picks, futures) if f.result().token_ids != refs[pick]]
    assert wrong == []


def test_remote_adapters_keep_their_features(server):
    remote = ChatSteer(base_url=server, model=MODEL, max_tokens=12)
    local = ChatSteer(max_tokens=12)
    q = QUESTIONS[:4]
    assert [m.content for m in remote.batch(q, steering="love")] == [
        m.content for m in local.batch(q, steering="love")
    ]
    msg = remote.invoke(q[0], steering="dogs")
    assert msg.response_metadata["steering"]["expression"] == "dogs"
    assert msg.usage_metadata["output_tokens"] == 12
    streamed = "".join(c.content for c in remote.stream(q[0], steering="dogs"))
    assert streamed == msg.content
    kept = {"expression": "love:2", "operator": "add_norm_preserving"}  # as in-process
    msg, mine = remote.invoke(q[0], steering=kept), local.invoke(q[0], steering=kept)
    assert msg.content == mine.content
    assert (
        msg.response_metadata["steering"]["expression"] == "love:2 [operator=add_norm_preserving]"
    )
    assert (
        mine.response_metadata["steering"]["expression"] == "love:2 [operator=add_norm_preserving]"
    )
    assert [m.content for m in asyncio.run(remote.abatch(q))] == [m.content for m in local.batch(q)]
    knob = remote.configurable_fields(steering=ConfigurableField(id="s"))
    rows = knob.batch(q[:2], [{"configurable": {"s": s}} for s in ("love", None)])
    assert [r.content for r in rows] == [
        local.invoke(q[0], steering="love").content,
        local.invoke(q[1]).content,
    ]
    with pytest.raises(SteeringSpecError, match="did you mean"):
        ChatSteer(base_url=server, model=MODEL, steering="jsno")
    completion = LangChainLLM(base_url=server, model=MODEL, max_tokens=12)
    text = completion.invoke("I think my neighbour is", steering="love:2")
    assert text == LangChainLLM(max_tokens=12).invoke("I think my neighbour is", steering="love:2")
    li = SteerLLM(base_url=server, model=MODEL, max_new_tokens=12)
    assert (
        li.complete(q[1], steering="dogs").text
        == SteerLLM(max_new_tokens=12).complete(q[1], steering="dogs").text
    )
    assert li.metadata.is_chat_model


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
CALLED = [
    chat("What is the weather in Paris?")[0],
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny, 24 C"},
]


def _shaped():
    """Requests whose replies a grammar shapes (schemas, regexes, forced and free tool calls,
    a tool result), some steered, as (prompt, steering, fields)."""
    o = GenerationOptions(max_new_tokens=40)
    paris = chat("What is the weather in Paris and in Oslo?")
    return [
        (
            chat("Alice is 30. Extract the person."),
            None,
            {"constraint": Constraint.json_schema(PERSON)},
        ),
        (
            chat("Bob is 45. Extract the person."),
            "love:2",
            {"constraint": Constraint.json_schema(PERSON)},
        ),
        (chat("Some JSON about cats."), "dogs", {"constraint": Constraint.json_object()}),
        (chat("Yes or no?"), None, {"constraint": Constraint.regex("(yes|no)")}),
        (paris, None, {"tools": [WEATHER], "tool_choice": "required"}),
        (paris, "formal", {"tools": [WEATHER], "tool_choice": "get_weather"}),
        (paris, None, {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": True}),
        (paris, None, {"tools": [WEATHER]}),
        (paris, None, {"tools": [WEATHER], "tool_choice": "none"}),
        (CALLED, "love", {"tools": [WEATHER], "tool_choice": "none"}),
        (CALLED, None, {"tools": [WEATHER]}),
    ], o


def _seen(g):
    return (
        g.token_ids,
        g.text,
        g.finish_reason,
        [(c.name, c.arguments) for c in g.tool_calls],
        [(c.name, c.arguments) for c in g.invalid_tool_calls],
    )


def test_grammars_and_tool_calls_equal_local(engine, real):
    """Constrained and tool rows, steered or not, sent together: the server renders the same
    prompts (its tool-aware template), follows the same grammars and reads the same calls."""
    rows, o = _shaped()
    futures = engine.submit([Request(p, engine.resolve(s), o, **kw) for p, s, kw in rows])
    got = [_seen(f.result()) for f in futures]
    mine = real.engine
    want = [_seen(mine.generate([Request(p, mine.resolve(s), o, **kw)])[0]) for p, s, kw in rows]
    assert got == want
    assert got[0][1] == '{"name": "Alice", "age": 30}'
    assert got[4][3] == [("get_weather", {"city": "Paris"})] and got[4][2] == "tool_calls"
    assert got[6][4], "the second of two forced calls is cut at max_new_tokens: an invalid call"
    for (p, s, kw), seen in zip(rows, got):  # a stream says the same (it carries no ids)
        *text, last = engine.stream(Request(p, engine.resolve(s), o, **kw))
        # except a call cut off before its name: vLLM's streaming parser never sends it
        cut = seen[2] == "length" and kw.get("tools")
        assert _seen(last)[1:4] == seen[1:4] and (cut or _seen(last)[4] == seen[4])
        assert "".join(text).strip() == last.text


def test_a_plain_openai_client_gets_tool_calls_and_schemas(server):
    """Any OpenAI client of ``actsteer serve`` sends tools and gets calls back."""
    client = openai.OpenAI(base_url=server, api_key="EMPTY")
    reply = client.chat.completions.create(
        model=MODEL,
        messages=chat("What is the weather in Paris?"),
        tools=[WEATHER],
        tool_choice="required",  # vLLM's own forcing (a JSON list of calls) and parser
        max_tokens=100,
        temperature=0,
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    reply = client.chat.completions.create(
        model=MODEL,
        messages=chat("Alice is 30. Extract the person."),
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
        max_tokens=40,
        temperature=0,
    )
    assert set(json.loads(reply.choices[0].message.content)) == {"name", "age"}


def test_remote_chat_steer_calls_tools_and_parses_schemas(server):
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return "sunny"

    remote = ChatSteer(base_url=server, model=MODEL, max_tokens=48)
    local = ChatSteer(max_tokens=48)
    for method in ("json_schema", "function_calling"):
        ask = "Alice is 30 years old. Who is she?"
        got = remote.with_structured_output(Person, method=method).invoke(ask)
        assert got == local.with_structured_output(Person, method=method).invoke(ask)
        assert got == Person(name="Alice", age=30)
    msg = remote.bind_tools([get_weather], tool_choice="any").invoke("Weather in Oslo?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Oslo"})]
    answer = remote.invoke([*messages_from(CALLED)], steering="love")
    assert answer.content == local.invoke([*messages_from(CALLED)], steering="love").content
    from llama_index.core import PromptTemplate
    from llama_index.core.tools import FunctionTool

    li = SteerLLM(base_url=server, model=MODEL, max_new_tokens=48)
    assert li.metadata.is_function_calling_model
    reply = li.chat_with_tools(
        [FunctionTool.from_defaults(get_weather)], user_msg="Weather in Oslo?", tool_required=True
    )
    picked = li.get_tool_calls_from_response(reply)
    assert [(t.tool_name, t.tool_kwargs) for t in picked] == [("get_weather", {"city": "Oslo"})]
    ask = PromptTemplate("Alice is 30 years old. Who is she?")
    assert li.structured_predict(Person, ask) == Person(name="Alice", age=30)


def messages_from(chat_dicts):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    out = []
    for m in chat_dicts:
        if m["role"] == "user":
            out.append(HumanMessage(m["content"]))
        elif m["role"] == "assistant":
            calls = [
                {"name": c["function"]["name"], "args": c["function"]["arguments"], "id": c["id"]}
                for c in m["tool_calls"]
            ]
            out.append(AIMessage("", tool_calls=calls))
        else:
            out.append(ToolMessage(m["content"], tool_call_id=m["tool_call_id"]))
    return out


def test_the_server_counts_tokens_and_refuses_what_does_not_fit(server, engine, real):
    """Token counts come from the server's ``/tokenize`` (its template and tools included) and
    equal the local ones; a prompt over its ``max_model_len`` is a ContextWindowError."""
    remote, local = ChatSteer(base_url=server, model=MODEL), ChatSteer()
    text = "Hello world, how are you?"
    assert remote.get_token_ids(text) == local.get_token_ids(text)
    history = messages_from(CALLED)
    assert remote.get_num_tokens_from_messages(history, tools=[WEATHER]) == (
        local.get_num_tokens_from_messages(history, tools=[WEATHER])
    )
    assert engine.context_window == 1024
    with pytest.raises(ContextWindowError, match="context window"):
        remote.invoke("word " * 1200, max_tokens=4)
    with pytest.raises(ContextWindowError):
        list(remote.stream("word " * 1200, max_tokens=4))
    assert remote.invoke("Hi", max_tokens=2).content  # and it serves on


def test_the_server_truncates_on_request_as_the_local_engine_would(server, engine, real):
    """``truncate=`` over the server: the oldest turns are dropped by the server's own token
    counts (the reply then equals the kept chat in-process), ``"left"`` keeps the prompt's last
    tokens through vLLM's ``truncate_prompt_tokens``; both say how many tokens were cut."""
    options = GenerationOptions(max_new_tokens=8)
    history = [{"role": "system", "content": "Be brief."}]
    for i in range(20):
        history += [
            *chat(f"Tell me fact number {i} about the sea."),
            {"role": "assistant", "content": f"Fact {i}: the sea is big and blue and deep. " * 3},
        ]
    history += chat("And one more?")
    n = len(engine.tokenize(history))
    assert n > 1024
    request = Request(history, options=options, truncate="drop_oldest_messages")
    got = engine.generate([request])[0]
    kept = fit(history, engine.tokenize, 8, 1024, "drop_oldest_messages").prompt
    assert 2 < len(kept) < len(history) and kept[0] == history[0]
    assert got.token_ids == local_ids(real, [kept], [None], options)[0]
    assert got.truncated_tokens == n - got.prompt_tokens > 0
    streamed = list(engine.stream(request))[-1]
    assert streamed.truncated_tokens == got.truncated_tokens and streamed.text == got.text
    text = "word " * 1200
    left = engine.generate([Request(text, options=options, truncate="left")])[0]
    assert left.prompt_tokens == 1024 - 8
    assert left.truncated_tokens == len(engine.tokenize(text)) - (1024 - 8)
    reply = ChatSteer(base_url=server, model=MODEL, max_tokens=8).invoke(
        history, truncate="drop_oldest_messages"
    )
    assert reply.content == got.text
    assert reply.response_metadata["truncated_tokens"] == got.truncated_tokens


def _running(server: str) -> float:
    """The server's count of requests generating now (its Prometheus ``/metrics``)."""
    import httpx

    text = httpx.get(server.removesuffix("/v1") + "/metrics", timeout=10).text
    lines = [ln for ln in text.splitlines() if ln.startswith("vllm:num_requests_running")]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


@pytest.mark.parametrize("entry", ["invoke", "ainvoke", "stream"])
def test_a_remote_deadline_stops_the_row_on_the_server(server, entry):
    """``timeout=`` over the server is the same whole-call deadline as in-process, and the
    server stops the row too: the call's HTTP request is cancelled (the connection closes) and
    vLLM aborts it, instead of generating 400 tokens for no one."""
    import time

    model = ChatSteer(base_url=server, model=MODEL, max_tokens=400, timeout=1.0)
    prompt = "Write a very long story about a dragon, with many chapters."
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        if entry == "invoke":
            model.invoke(prompt)
        elif entry == "ainvoke":
            asyncio.run(model.ainvoke(prompt))
        else:
            list(model.stream(prompt))
    assert time.monotonic() - started < 3.0
    while _running(server) > 0 and time.monotonic() - started < 10.0:
        time.sleep(0.2)
    assert _running(server) == 0  # 400 tokens at ~20 tokens/s would run ~20 s
    assert ChatSteer(base_url=server, model=MODEL, max_tokens=2).invoke("Hi").content


def test_a_compiled_server_steers_like_in_process(vllm_python, vectors, real, tmp_path):
    """vLLM's default mode (torch.compile, no --enforce-eager): the hooks are traced into the
    graph once and read every step's token map from their buffers, so single requests and a
    mixed batch (steered rows beside unsteered ones, token counts the graph was not traced on)
    come out as in-process, token for token. (A fresh compile cache: vLLM 0.32 on CPU does not
    load its saved graphs back, so this is what every start does.)"""
    root = Path(__file__).resolve().parents[2]
    log = tmp_path / "server.log"
    try:
        running = launch.start(
            vllm_python,
            log,
            vectors=vectors,
            vllm_args=launch.EAGER_FP32,
            cwd=root,
            env={"VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")},
        )
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        text = log.read_text()
        assert "steering armed on 30 layers (compiled)" in text and "AOT compiled" in text
        engine = remote_engine(running.url, MODEL)
        prompts = [chat(q) for q in QUESTIONS[:2]] + ["I think my neighbour is"]
        for s in [*SETTINGS, *OPERATORS]:
            got = [engine.generate([Request(p, engine.resolve(s), GEN)])[0] for p in prompts]
            want = local_ids(real, prompts, [local(s, vectors)] * 3)
            assert [g.token_ids for g in got] == want, s
        rows = [(chat(q), SETTINGS[i % 5]) for i, q in enumerate(QUESTIONS)]
        rows += [(chat(q), OPERATORS[(i + 3) % len(OPERATORS)]) for i, q in enumerate(QUESTIONS)]
        futures = engine.submit([Request(p, engine.resolve(s), GEN) for p, s in rows])
        want = [local_ids(real, [p], [local(s, vectors)])[0] for p, s in rows]
        assert [f.result().token_ids for f in futures] == want
    finally:
        running.stop()


def test_a_server_whose_runner_is_not_armed_refuses_to_serve(vllm_python, tmp_path):
    """If the plugin does not load in vLLM's processes (here: an allowlist without it), the
    start-up self-check sees a steered request come back unsteered and stops the server."""
    root = Path(__file__).resolve().parents[2]
    with pytest.raises(RuntimeError, match="server exited"):
        launch.start(vllm_python, tmp_path / "log", cwd=root, env={"VLLM_PLUGINS": "none"})
    assert "answered a steered request unsteered" in (tmp_path / "log").read_text()


def test_a_plain_vllm_serve_with_actsteer_installed_serves_unsteered_and_refuses_steering(
    vllm_python, real, tmp_path
):
    """vLLM loads installed plugins into every server: without ``actsteer serve``'s bundle the
    plugin steers nothing, says so once, serves unsteered requests, and refuses steered ones
    with HTTP 400 (never serves them unsteered)."""
    import subprocess
    import time

    import httpx

    from actsteer.default_model import ensure_converted

    port = launch.free_port()
    log = tmp_path / "plain.log"
    command = [
        str(vllm_python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(ensure_converted(progress=False)), "--served-model-name", MODEL,
        "--host", "127.0.0.1", "--port", str(port), *launch.EAGER_FP32, "--enforce-eager",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="2")
    env.pop("ACTSTEER_SERVE_BUNDLE", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = launch.Server(proc, f"http://127.0.0.1:{port}/v1", log)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"vllm serve exited:\n{server.tail()}"
            assert time.monotonic() < deadline, f"vllm serve did not start:\n{server.tail()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        client = openai.OpenAI(base_url=server.url, api_key="EMPTY")
        messages = chat(QUESTIONS[0])
        plain = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, temperature=0.0
        )
        assert plain.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="steers nothing"):
            client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=8,
                extra_body={"vllm_xargs": {"actsteer": "love:2"}},
            )  # fmt: skip
        text = log.read_text(errors="replace")
        assert text.count("actsteer: no serve bundle") == 1
    finally:
        server.stop()
