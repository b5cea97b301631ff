"""The async generation thread: calls waiting together merge into one generate, each row equal
to its call alone; bad input, other options and cancellation stay per call."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import build_tiny, random_vector

from actsteer import Steering, SteeringVector
from actsteer.errors import VectorShapeError
from actsteer.runtime import worker
from actsteer.train.extract import mean_diff

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
def gate(sm):
    """Holds the first generate until released, so that later calls queue up behind it; records
    each generate's row count and thread, and its results (``engine.observe``)."""
    release = threading.Event()
    release.holding = threading.Event()  # type: ignore[attr-defined]
    runs: list[tuple[int, str]] = []
    results: list = []

    def before(rows: int) -> None:
        first = not runs
        runs.append((rows, threading.current_thread().name))
        if first:
            release.holding.set()  # type: ignore[attr-defined]
            release.wait(30)

    remove = sm.engine.observe(before, results.append)
    yield release, runs, results
    release.set()
    remove()


def wait_until(condition, timeout: float = 30.0) -> None:
    """Block until ``condition()`` holds (polling), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.002)


async def _held(release) -> None:
    """Until the first generate is running and held by the gate."""
    await asyncio.to_thread(release.holding.wait, 30)


async def _queued(n: int) -> None:
    """Until ``n`` calls wait for the generation thread."""
    await asyncio.to_thread(wait_until, lambda: worker.waiting() >= n)


async def test_waiting_calls_merge_into_one_generate(sm, settings, references, gate):
    release, runs, _ = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], settings[0], **GEN))
    await _held(release)
    rest = [
        asyncio.create_task(sm.agenerate(p, settings[i % 4], **GEN))
        for i, p in enumerate(PROMPTS)
        if i
    ]
    await _queued(5)
    release.set()
    outs = [await first] + [await t for t in rest]
    assert outs == references
    assert [n for n, _ in runs] == [1, len(PROMPTS) - 1]
    assert {name for _, name in runs} == {"actsteer-generate"}


async def test_calls_with_other_options_join_the_running_batch_too(sm, settings, references, gate):
    """Continuous batching: options no longer need to match; each row keeps its own."""
    release, runs, _ = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN))
    await _held(release)
    same = [asyncio.create_task(sm.agenerate(PROMPTS[i], settings[i], **GEN)) for i in (1, 2)]
    longer = asyncio.create_task(sm.agenerate(PROMPTS[3], settings[3], max_new_tokens=12))
    await _queued(3)
    release.set()
    assert [await first] + [await t for t in same] == references[:3]
    longer_text = await longer
    assert [n for n, _ in runs] == [1, 3]
    assert longer_text == sm.generate(PROMPTS[3], settings[3], max_new_tokens=12)


async def test_a_bad_call_fails_alone(sm, settings, references, gate):
    release, runs, _ = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN))
    await _held(release)
    wrong = SteeringVector({1: [1.0, 2.0, 3.0]})  # not the model's hidden size
    bad = asyncio.create_task(sm.agenerate(PROMPTS[1], wrong, **GEN))
    good = asyncio.create_task(sm.agenerate(PROMPTS[2], settings[2], **GEN))
    await _queued(2)
    release.set()
    assert await first == references[0]
    with pytest.raises(VectorShapeError):
        await bad
    assert await good == references[2]
    assert [n for n, _ in runs] == [1, 1]  # the bad call never reached a generate


async def test_cancelling_one_call_keeps_the_others(sm, settings, references, gate):
    release, runs, _ = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN))
    await _held(release)
    queued = asyncio.create_task(sm.agenerate(PROMPTS[1], settings[1], **GEN))
    kept = asyncio.create_task(sm.agenerate(PROMPTS[2], settings[2], **GEN))
    await _queued(2)
    queued.cancel()  # cancelled while queued: never generated
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await first == references[0] and await kept == references[2]
    assert [n for n, _ in runs] == [1, 1]


async def test_cancelling_a_running_merged_row_stops_only_it(sm, settings, gate):
    release, runs, results = gate
    first = asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN))
    await _held(release)
    opts = {"max_new_tokens": 400}
    long = asyncio.create_task(sm.agenerate_detailed(PROMPTS[0], **opts))
    kept = asyncio.create_task(sm.agenerate_detailed(PROMPTS[1], settings[1], **opts))
    await _queued(2)
    release.set()
    await first
    slow = sm.layers[0].register_forward_hook(lambda *a: time.sleep(0.005))  # 400 steps: 2 s
    try:
        await asyncio.to_thread(wait_until, lambda: len(runs) == 2)  # long + kept generating
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
    await _held(release)
    rest = [asyncio.create_task(sm.agenerate(PROMPTS[0], **GEN)) for _ in range(5)]
    await _queued(5)
    release.set()
    assert [await first] + [await t for t in rest] == [references[0]] * 6
    sizes = [n for n, _ in runs]  # rows join only while fewer than the cap decode
    assert sizes[0] == 1 and sum(sizes) == 6 and max(sizes) <= 2 and len(sizes) >= 4


def test_threads_calling_together_merge_too(sm, settings, references, gate):
    release, runs, _ = gate
    outs: dict[int, str] = {}

    def call(i: int) -> None:
        outs[i] = sm.generate(PROMPTS[i], settings[i % 4], **GEN)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
    threads[0].start()
    release.holding.wait(30)  # the first call holds the worker; the rest queue behind it
    for t in threads[1:]:
        t.start()
    wait_until(lambda: worker.waiting() >= len(PROMPTS) - 1)
    release.set()
    for t in threads:
        t.join(60)
    assert [outs[i] for i in range(len(PROMPTS))] == references
    assert [n for n, _ in runs] == [1, len(PROMPTS) - 1]


def test_streams_merge_and_each_gets_its_own_tokens(sm, settings, references, gate):
    release, runs, _ = gate
    first = threading.Thread(target=sm.generate, args=(PROMPTS[0],), kwargs=GEN)
    first.start()
    release.holding.wait(30)
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
    wait_until(lambda: worker.waiting() >= 3)
    release.set()
    for t in (first, *readers, plain):
        t.join(60)
    assert [texts[i] for i in (1, 2, 3)] == references[1:4]
    assert [n for n, _ in runs] == [1, 3]


def test_a_failed_merged_generate_reaches_every_caller(sm, settings):
    def broken(rows: int) -> None:
        raise RuntimeError("device lost")

    remove = sm.engine.observe(broken)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            sm.generate(PROMPTS[0], **GEN)
        with pytest.raises(RuntimeError, match="device lost"):
            list(sm.stream(PROMPTS[1], settings[1], **GEN))
    finally:
        remove()
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


@pytest.fixture
def hold(sm):
    """``hold()`` blocks the worker inside its next generate until the returned event is set;
    ``event.sizes`` records the row count of every generate meanwhile."""
    removers = []
    events = []

    def start() -> threading.Event:
        release = threading.Event()
        holding = threading.Event()
        sizes: list[int] = []

        def before(rows: int) -> None:
            sizes.append(rows)
            if len(sizes) == 1:
                holding.set()
                release.wait(30)

        removers.append(sm.engine.observe(before))
        events.append(release)
        threading.Thread(target=sm.generate, args=(PROMPTS[0],), kwargs=GEN, daemon=True).start()
        holding.wait(30)
        release.sizes = sizes  # type: ignore[attr-defined]
        return release

    yield start
    for release in events:
        release.set()
    for remove in removers:
        remove()


def _queue_then_release(threads: list[threading.Thread], release: threading.Event) -> None:
    """Start calls while the worker is held, so they queue together; then let them run."""
    for t in threads:
        t.start()
    wait_until(lambda: worker.waiting() >= len(threads))
    release.set()
    for t in threads:
        t.join(60)


def test_merged_rows_end_where_they_would_alone(sm, settings, hold):
    """A row that ends early (stop string, EOS, cancel) inside a longer merged batch reports the
    same text, token count and finish reason as alone, and its stream ends with it."""
    long = {"max_new_tokens": 24}
    alone_text = sm.generate(PROMPTS[1], settings[1], **long)
    stop = alone_text[3:5]
    alone = sm.generate_detailed(PROMPTS[1], settings[1], stop=[stop], **long)
    assert alone.finish_reason == "stop" and alone.completion_tokens < 24
    release = hold()
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


def test_a_queued_stream_cancels_at_once(sm, hold):
    release = hold()
    try:
        event = threading.Event()
        pieces: list[str] = []
        reader = threading.Thread(
            target=lambda: pieces.extend(sm.stream(PROMPTS[1], cancel=event, **GEN))
        )
        reader.start()
        wait_until(lambda: worker.waiting() >= 1)  # queued behind the held generate
        event.set()
        reader.join(5)
        assert not reader.is_alive(), "a cancelled queued stream waited for the worker"
        assert pieces == []
    finally:
        release.set()


class Fatal(BaseException):
    """Not an Exception: must not kill the worker thread."""


def test_the_worker_survives_fatal_errors_and_retries_failed_merges(sm, settings, hold):
    def fatal(rows: int) -> None:
        raise Fatal

    remove = sm.engine.observe(fatal)
    with pytest.raises(Fatal):
        sm.generate(PROMPTS[0], **GEN)
    remove()
    assert sm.generate(PROMPTS[0], **GEN)  # the same worker serves on

    sizes: list[int] = []

    def no_merges(rows: int) -> None:  # e.g. the padded batch does not fit in memory
        sizes.append(rows)
        if rows > 1:
            raise RuntimeError("out of memory")

    release = hold()
    remove = sm.engine.observe(no_merges)
    outs: dict[int, str] = {}
    threads = [
        threading.Thread(
            target=lambda i=i: outs.__setitem__(i, sm.generate(PROMPTS[i], settings[i], **GEN))
        )
        for i in (1, 2)
    ]
    _queue_then_release(threads, release)
    remove()
    assert outs == {i: sm.generate(PROMPTS[i], settings[i], **GEN) for i in (1, 2)}
    assert sizes == [2, 1, 1]  # the failed merge, then each row alone


EXIT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import build_tiny
from langchain_steer import ChatSteer
chat = ChatSteer(runtime=build_tiny("llama", seed=11), max_tokens=300)
for chunk in chat.stream("hello"):
    break  # a script that has what it needs, and ends while the row still runs
print("done")
"""


def test_a_script_ending_while_a_row_runs_exits_cleanly():
    """Python finalizing while the generation thread is inside a generate aborted the process
    (exit 134, "terminate called without an active exception") in most runs: at exit the
    running rows are now cancelled and the thread joined."""
    import subprocess
    import sys
    from pathlib import Path

    script = EXIT_SCRIPT.format(tests=str(Path(__file__).resolve().parent.parent))
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert (out.returncode, out.stdout.strip()) == (0, "done"), out.stderr[-2000:]
