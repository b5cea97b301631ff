"""The async generation thread: calls waiting together merge into one generate, each row equal
to its call alone; bad input, other options and cancellation stay per call."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import build_tiny, random_vector

from actsteer import Steering, SteeringVector, worker
from actsteer.errors import VectorShapeError
from actsteer.extract import mean_diff

GEN = {"max_new_tokens": 8}
PROMPTS = [f"query {i}" for i in range(6)]


@pytest.fixture(scope="module")
def sm():
    return build_tiny("qwen2", seed=11)


@pytest.fixture(scope="module")
def settings(sm):
    a, b = (random_vector(sm, [1, 2], 2.0, seed=s) for s in (1, 2))
    return [None, Steering(a), Steering(b, -1.0, positions="generated"), [a, Steering(b, 0.5)]]


@pytest.fixture(scope="module")
def references(sm, settings):
    refs = [sm.generate(p, settings[i % 4], **GEN) for i, p in enumerate(PROMPTS)]
    assert len(set(refs[:4])) == 4  # a mix-up between rows would show
    return refs


@pytest.fixture
def gate(sm, monkeypatch):
    """Holds the first generate until released, so that later calls queue up behind it; records
    each generate's row count and thread."""
    release = threading.Event()
    runs: list[tuple[int, str]] = []
    real = sm._generate_rows

    def gated(encoded, *args, **kwargs):
        if not runs:
            release.wait(30)
        runs.append((len(encoded), threading.current_thread().name))
        out = real(encoded, *args, **kwargs)
        results.append(out)
        return out

    results: list = []
    monkeypatch.setattr(sm, "_generate_rows", gated)
    return release, runs, results


async def _until_queued() -> None:
    await asyncio.sleep(0.2)  # lets every task reach the queue


async def test_waiting_calls_merge_into_one_generate(sm, settings, references, gate):
    release, runs, _ = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], settings[0], **GEN))
    await asyncio.sleep(0.1)
    rest = [
        asyncio.create_task(sm.agenerate(p, settings[i % 4], **GEN))
        for i, p in enumerate(PROMPTS)
        if i
    ]
    await _until_queued()
    release.set()
    outs = [await first] + [await t for t in rest]
    assert outs == references
    assert [n for n, _ in runs] == [1, len(PROMPTS) - 1]
    assert {name for _, name in runs} == {"actsteer-generate"}


async def test_other_options_do_not_merge(sm, settings, references, gate):
    release, runs, _ = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN))
    await asyncio.sleep(0.1)
    same = [asyncio.create_task(sm.agenerate(PROMPTS[i], settings[i], **GEN)) for i in (1, 2)]
    longer = asyncio.create_task(sm.agenerate(PROMPTS[3], settings[3], max_new_tokens=12))
    await _until_queued()
    release.set()
    assert [await first] + [await t for t in same] == references[:3]
    longer_text = await longer
    assert sorted(n for n, _ in runs) == [1, 1, 2]
    assert longer_text == sm.generate(PROMPTS[3], settings[3], max_new_tokens=12)


async def test_a_bad_call_fails_alone(sm, settings, references, gate):
    release, runs, _ = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN))
    await asyncio.sleep(0.1)
    wrong = SteeringVector({1: [1.0, 2.0, 3.0]})  # not the model's hidden size
    bad = asyncio.create_task(sm.agenerate(PROMPTS[1], wrong, **GEN))
    good = asyncio.create_task(sm.agenerate(PROMPTS[2], settings[2], **GEN))
    await _until_queued()
    release.set()
    assert await first == references[0]
    with pytest.raises(VectorShapeError):
        await bad
    assert await good == references[2]
    assert [n for n, _ in runs] == [1, 1]  # the bad call never reached a generate


async def test_cancelling_one_call_keeps_the_others(sm, settings, references, gate):
    release, runs, _ = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN))
    await asyncio.sleep(0.1)
    queued = asyncio.create_task(sm.agenerate(PROMPTS[1], settings[1], **GEN))
    kept = asyncio.create_task(sm.agenerate(PROMPTS[2], settings[2], **GEN))
    await _until_queued()
    queued.cancel()  # cancelled while queued: never generated
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await first == references[0] and await kept == references[2]
    assert [n for n, _ in runs] == [1, 1]


async def test_cancelling_a_running_merged_row_stops_only_it(sm, settings, gate):
    release, runs, results = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN))
    await asyncio.sleep(0.1)
    opts = {"max_new_tokens": 400}
    long = asyncio.create_task(sm.agenerate_detailed(PROMPTS[0], **opts))
    kept = asyncio.create_task(sm.agenerate_detailed(PROMPTS[1], settings[1], **opts))
    await _until_queued()
    release.set()
    await first
    slow = sm.layers[0].register_forward_hook(lambda *a: time.sleep(0.005))  # 400 steps: 2 s
    try:
        await asyncio.sleep(0.3)  # the merged generate of long + kept is running
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        done = await kept
    finally:
        slow.remove()
    assert [n for n, _ in runs] == [1, 2]
    stopped = results[1][0]
    assert stopped.finish_reason == "cancelled" and stopped.completion_tokens < 400
    assert done.text == sm.generate(PROMPTS[1], settings[1], **opts)


async def test_merging_respects_the_row_cap(sm, references, gate, monkeypatch):
    monkeypatch.setattr(worker, "MAX_MERGED_ROWS", 2)
    release, runs, _ = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN))
    await asyncio.sleep(0.1)
    rest = [asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN)) for _ in range(5)]
    await _until_queued()
    release.set()
    assert [await first] + [await t for t in rest] == [references[0]] * 6
    assert [n for n, _ in runs] == [1, 2, 2, 1]


def test_threads_calling_together_merge_too(sm, settings, references, gate):
    release, runs, _ = gate
    outs: dict[int, str] = {}

    def call(i: int) -> None:
        outs[i] = sm.generate(PROMPTS[i], settings[i % 4], **GEN)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
    threads[0].start()
    time.sleep(0.1)  # the first call holds the worker; the rest queue behind it
    for t in threads[1:]:
        t.start()
    time.sleep(0.3)
    release.set()
    for t in threads:
        t.join(60)
    assert [outs[i] for i in range(len(PROMPTS))] == references
    assert [n for n, _ in runs] == [1, len(PROMPTS) - 1]


def test_streams_merge_and_each_gets_its_own_tokens(sm, settings, references, gate):
    release, runs, _ = gate
    first = threading.Thread(target=sm.generate, args=(PROMPTS[0],), kwargs=GEN)
    first.start()
    time.sleep(0.1)
    streams = [sm.stream(PROMPTS[i], settings[i], **GEN) for i in (1, 2)]
    texts: dict[int, str] = {}
    readers = [
        threading.Thread(target=lambda i=i, s=s: texts.__setitem__(i, "".join(s)))
        for i, s in zip((1, 2), streams)
    ]
    for r in readers:
        r.start()
    plain = threading.Thread(
        target=lambda: texts.__setitem__(3, sm.generate(PROMPTS[3], settings[3], **GEN))
    )
    plain.start()
    time.sleep(0.3)
    release.set()
    for t in (first, *readers, plain):
        t.join(60)
    assert [texts[i] for i in (1, 2, 3)] == references[1:4]
    assert [n for n, _ in runs] == [1, 3]


def test_a_failed_merged_generate_reaches_every_caller(sm, settings, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(sm, "_generate_rows", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        sm.generate(PROMPTS[0], **GEN)
    with pytest.raises(RuntimeError, match="device lost"):
        list(sm.stream(PROMPTS[1], settings[1], **GEN))
    monkeypatch.undo()
    assert sm.generate(PROMPTS[0], **GEN)  # the worker lives on


def test_reading_activations_and_extraction_run_on_the_worker(sm):
    seen: list[str] = []
    layer = sm.layers[0]
    handle = layer.register_forward_hook(lambda *a: seen.append(threading.current_thread().name))
    try:
        sm.hidden_states(["hello"], [1])
        sm.continuation_logprobs("hello", " there")
        mean_diff(sm, [("good", "bad")], layers=[1])
    finally:
        handle.remove()
    assert seen and set(seen) == {"actsteer-generate"}


def _hold_worker(sm, monkeypatch):
    """Block the worker inside its next generate until the returned event is set."""
    release = threading.Event()
    real = sm._generate_rows
    sizes: list[int] = []

    def gated(encoded, *args, **kwargs):
        sizes.append(len(encoded))
        if len(sizes) == 1:
            release.wait(30)
        return real(encoded, *args, **kwargs)

    monkeypatch.setattr(sm, "_generate_rows", gated)
    threading.Thread(target=sm.generate, args=(PROMPTS[0],), kwargs=GEN, daemon=True).start()
    time.sleep(0.1)
    release.sizes = sizes  # type: ignore[attr-defined]
    return release


def _queue_then_release(threads: list[threading.Thread], release: threading.Event) -> None:
    """Start calls while the worker is held, so they queue together; then let them run."""
    for t in threads:
        t.start()
    time.sleep(0.3)
    release.set()
    for t in threads:
        t.join(60)


def test_merged_rows_end_where_they_would_alone(sm, settings, monkeypatch):
    """A row that ends early (stop string, EOS, cancel) inside a longer merged batch reports the
    same text, token count and finish reason as alone, and its stream ends with it."""
    long = {"max_new_tokens": 24}
    alone_text = sm.generate(PROMPTS[1], settings[1], **long)
    stop = alone_text[3:5]
    alone = sm.generate_detailed(PROMPTS[1], settings[1], stop=[stop], **long)
    assert alone.finish_reason == "stop" and alone.completion_tokens < 24
    release = _hold_worker(sm, monkeypatch)
    results: dict[str, object] = {}
    finished: list = []

    def streamed() -> None:
        stream = sm.stream(PROMPTS[1], settings[1], stop=[stop], on_finish=finished.append, **long)
        results["stream"] = "".join(stream)

    def merged() -> None:
        results["merged"] = sm.generate_detailed(PROMPTS[1], settings[1], stop=[stop], **long)

    def other() -> None:
        results["other"] = sm.generate_detailed(PROMPTS[2], settings[2], stop=[stop], **long)

    threads = [threading.Thread(target=f) for f in (streamed, merged, other)]
    _queue_then_release(threads, release)
    assert release.sizes == [1, 3]  # the three calls really shared one generate
    got = results["merged"]
    assert (got.text, got.completion_tokens, got.finish_reason) == (
        alone.text,
        alone.completion_tokens,
        alone.finish_reason,
    )
    assert results["stream"] == alone.text
    assert finished[0].completion_tokens == alone.completion_tokens


def test_a_preset_cancel_event_is_read_not_raised_and_never_set(sm):
    event = threading.Event()
    event.set()
    g = sm.generate_detailed(PROMPTS[0], cancel=event, max_new_tokens=50)
    assert g.finish_reason == "cancelled" and g.completion_tokens <= 1
    own = threading.Event()
    sm.generate_detailed(PROMPTS[0], cancel=own, **GEN)
    assert not own.is_set()  # actsteer never sets the caller's event


def test_a_queued_stream_cancels_at_once(sm, monkeypatch):
    release = _hold_worker(sm, monkeypatch)
    try:
        event = threading.Event()
        pieces: list[str] = []
        reader = threading.Thread(
            target=lambda: pieces.extend(sm.stream(PROMPTS[1], cancel=event, **GEN))
        )
        reader.start()
        time.sleep(0.2)
        event.set()
        reader.join(5)
        assert not reader.is_alive(), "a cancelled queued stream waited for the worker"
        assert pieces == []
    finally:
        release.set()


class Fatal(BaseException):
    """Not an Exception: must not kill the worker thread."""


def test_the_worker_survives_fatal_errors_and_retries_failed_merges(sm, settings, monkeypatch):
    real = sm._generate_rows

    def fatal(*args, **kwargs):
        raise Fatal

    monkeypatch.setattr(sm, "_generate_rows", fatal)
    with pytest.raises(Fatal):
        sm.generate(PROMPTS[0], **GEN)
    monkeypatch.setattr(sm, "_generate_rows", real)
    assert sm.generate(PROMPTS[0], **GEN)  # the same worker serves on

    sizes: list[int] = []

    def no_merges(encoded, *args, **kwargs):  # e.g. the padded batch does not fit in memory
        sizes.append(len(encoded))
        if len(encoded) > 1:
            raise RuntimeError("out of memory")
        return real(encoded, *args, **kwargs)

    release = _hold_worker(sm, monkeypatch)
    monkeypatch.setattr(sm, "_generate_rows", no_merges)
    outs: dict[int, str] = {}
    threads = [
        threading.Thread(
            target=lambda i=i: outs.__setitem__(i, sm.generate(PROMPTS[i], settings[i], **GEN))
        )
        for i in (1, 2)
    ]
    _queue_then_release(threads, release)
    monkeypatch.undo()
    assert outs == {i: sm.generate(PROMPTS[i], settings[i], **GEN) for i in (1, 2)}
    assert sizes == [2, 1, 1]
