"""Per-call steering under threads and asyncio, and no trace after failures or cancellation."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import build_tiny, random_vector

from actsteer import Steering
from actsteer.apply.hooks import current_state
from actsteer.runtime import worker

GEN = {"max_new_tokens": 8}
PROMPTS = [f"prompt number {i}" for i in range(8)]


@pytest.fixture(scope="module")
def sm():
    return build_tiny("llama", seed=5)


@pytest.fixture(scope="module")
def settings(sm):
    vecs = [random_vector(sm, [1, 2], 1.5, seed=s) for s in range(4)]
    return [
        None,
        Steering(vecs[0]),
        Steering(vecs[1], -1.0, positions="generated"),
        Steering(vecs[2], operator="ablate"),
        Steering(vecs[3], operator="add_norm_preserving"),
        Steering(vecs[0] + vecs[1], 0.5),
        [Steering(vecs[2]), Steering(vecs[3], positions="prompt")],
        Steering(vecs[1], 2.0, layers=[1]),
    ]


@pytest.fixture(scope="module")
def references(sm, settings):
    return [sm.generate(p, s, **GEN) for p, s in zip(PROMPTS, settings)]


def test_settings_produce_distinct_outputs(references):
    assert len(set(references)) >= 6  # the test below could not pass by accident


def test_threads_never_see_each_others_steering(sm, settings, references):
    barrier = threading.Barrier(8)

    def call(i: int) -> list[str]:
        barrier.wait()
        return [sm.generate(PROMPTS[i], settings[i], **GEN) for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    for i, rounds in enumerate(results):
        assert rounds == [references[i]] * 3


async def test_asyncio_tasks_never_see_each_others_steering(sm, settings, references):
    for _ in range(3):
        outs = await asyncio.gather(
            *(sm.agenerate(PROMPTS[i], settings[i], **GEN) for i in range(8))
        )
        assert outs == references


async def test_astream_matches_generate(sm, settings, references):
    pieces = [piece async for piece in sm.astream(PROMPTS[1], settings[1], **GEN)]
    assert "".join(pieces) == references[1]


async def test_an_open_astream_holds_no_thread_of_the_loops_default_executor(
    sm, settings, references
):
    """Each stream held a thread of the loop's default executor for its whole life (6 on two
    cores), so later streams and ``to_thread`` calls waited for earlier streams to end."""
    i = next(i for i, text in enumerate(references) if text)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    release = threading.Event()
    busy = threading.Thread(target=worker.call, args=(release.wait,))
    busy.start()  # the generation thread is busy: the stream below stays open, waiting
    try:
        stream = sm.astream(PROMPTS[i], settings[i], **GEN)
        first = asyncio.ensure_future(stream.__anext__())
        while worker.waiting() < 1:  # its job is queued: the stream is open
            await asyncio.sleep(0.01)
        assert await asyncio.wait_for(loop.run_in_executor(None, int), 10) == 0
    finally:
        release.set()
        busy.join()
    pieces = [await first] + [p async for p in stream]
    assert "".join(pieces) == references[i]


def test_mixed_batch_rows_match_references(sm, settings, references):
    assert sm.generate_batch(PROMPTS, list(settings), **GEN) == references


def test_exception_mid_generation_leaves_no_trace(sm, settings, references):
    layer = sm.layers[3]
    calls = {"n": 0}

    def boom(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure")

    handle = layer.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            sm.generate(PROMPTS[1], settings[1], **GEN)
    finally:
        handle.remove()
    assert worker.call(current_state) is None  # where generation ran
    assert sm.generate(PROMPTS[0], **GEN) == references[0]
    assert sm.generate(PROMPTS[1], settings[1], **GEN) == references[1]


def test_abandoned_stream_leaves_no_trace(sm, settings, references):
    before = threading.active_count()
    # (settings[1] makes this random model repeat one unfinished byte: a stream with no text)
    stream = sm.stream(PROMPTS[1], settings[2], max_new_tokens=40)
    next(stream)
    stream.close()
    assert threading.active_count() == before  # the worker was stopped and joined
    assert worker.call(current_state) is None  # where generation ran
    assert sm.generate(PROMPTS[0], **GEN) == references[0]


def test_stream_reraises_worker_errors(sm, settings):
    handle = sm.layers[0].register_forward_hook(lambda *a: (_ for _ in ()).throw(ValueError("bad")))
    try:
        with pytest.raises(ValueError, match="bad"):
            list(sm.stream(PROMPTS[1], settings[1], **GEN))
    finally:
        handle.remove()


async def test_cancelled_task_stops_generation_and_leaves_no_trace(sm, references):
    started = threading.Event()
    remove = sm.engine.observe(lambda rows: started.set())
    task = asyncio.create_task(sm.agenerate(PROMPTS[0], max_new_tokens=400))
    await asyncio.to_thread(started.wait, 30)  # the generate is running
    remove()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await worker.acall(current_state) is None  # where generation ran
    assert await sm.agenerate(PROMPTS[0], **GEN) == references[0]


def test_steer_context_is_local_to_its_thread(sm, settings):
    ids = torch.tensor([sm.encode(PROMPTS[0])])
    plain = sm.model(ids).logits
    seen = {}
    with sm.steer(settings[1]):
        t = threading.Thread(target=lambda: seen.setdefault("logits", sm.model(ids).logits))
        t.start()
        t.join()
        assert not torch.equal(sm.model(ids).logits, plain)
    assert torch.equal(seen["logits"], plain)
