"""Continuous batching (``actsteer.schedule``): calls join a running batch at a decode step and
leave it the step they end. Every row still gives exactly what the same request gives alone,
whatever joins or leaves beside it. Joins are timed by the model's own forward passes (a hook
submits the next request at a chosen step), never by sleeps."""

from __future__ import annotations

import random
import threading

import pytest
from conftest import random_vector

from actsteer import GenerationOptions, Request, Steering
from actsteer.engine import CallCancel
from actsteer.runtime import worker
from actsteer.schedule.batch import supports_joining

PROMPTS = [
    "hello there",
    "a much longer prompt with many more tokens in it than the others",
    "hi",
    "x y z",
    "steering vectors for everyone",
    "ok",
]


def _settings(sm):
    v = random_vector(sm, [1, 2], 3.0)
    w = random_vector(sm, [2, 3], 2.0, seed=5)
    return [
        None,
        Steering(v),
        Steering(v, positions="generated"),
        Steering(w, positions="prompt"),
        Steering(w, 1.0, operator="ablate"),
        Steering(v, operator="add_norm_preserving"),
        Steering(v, 4.0, positions="actadd"),
    ]


def _requests(sm, n: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    settings = _settings(sm)
    out = []
    for i in range(n):
        steering = settings[rng.randrange(len(settings))]
        options = GenerationOptions(max_new_tokens=rng.choice([3, 8, 16, 24]))
        resolved = sm.resolve(steering) if steering is not None else ()
        out.append(Request(PROMPTS[i % len(PROMPTS)] + f" {i}", resolved, options))
    return out


class _JoinAt:
    """Submits ``requests[i]`` from inside the model's forward number ``steps[i]`` (on the
    generation thread), so it joins the running batch at the next step boundary."""

    def __init__(self, sm, requests, steps) -> None:
        self.sm, self.plan = sm, sorted(zip(steps, range(len(requests)), strict=True))
        self.requests, self.futures = requests, {}
        self.forwards = 0
        self.handle = sm.model.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.forwards += 1
        while self.plan and self.plan[0][0] <= self.forwards:
            _, i = self.plan.pop(0)
            (self.futures[i],) = self.sm.engine.submit([self.requests[i]])

    def close(self) -> None:
        self.handle.remove()


def test_the_tiny_models_take_rows_in_and_out(llama):
    assert supports_joining(llama.handle) and llama.engine.joining


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_that_join_at_random_steps_equal_the_same_requests_alone(llama, seed):
    requests = _requests(llama, 8, seed)
    alone = [llama.engine.generate([r])[0] for r in requests]
    assert len({len(g.token_ids) for g in alone}) > 1  # early finishers among them
    rng = random.Random(seed)
    joins = _JoinAt(llama, requests[1:], [rng.randrange(1, 30) for _ in requests[1:]])
    sizes: list[int] = []
    remove = llama.engine.observe(sizes.append)
    try:
        first = llama.engine.generate([requests[0]])[0]
        while joins.plan:  # the first row ended before every join step: start another run
            llama.engine.generate([Request("again", (), GenerationOptions(max_new_tokens=30))])
        together = [first] + [joins.futures[i].result(60) for i in range(len(requests) - 1)]
    finally:
        joins.close()
        remove()
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert [g.text for g in together] == [g.text for g in alone]
    assert len(sizes) > 1  # rows were admitted step by step, not all at once


def test_a_row_cancelled_mid_run_stops_and_its_neighbours_go_on(llama):
    long = GenerationOptions(max_new_tokens=40)
    requests = [Request(p, (), long) for p in PROMPTS[:3]]
    alone = [llama.engine.generate([r])[0] for r in requests]
    forwards = 0
    futures: list = []

    def cancel_the_middle_one(*_: object) -> None:
        nonlocal forwards
        forwards += 1
        if forwards == 6:
            futures[1].cancel()  # from the generation thread itself, between two steps

    handle = llama.model.register_forward_hook(cancel_the_middle_one)
    try:
        futures.extend(llama.engine.submit(requests))
        got = [futures[0].result(60), futures[2].result(60)]
    finally:
        handle.remove()
    assert futures[1].cancelled()
    assert [g.token_ids for g in got] == [alone[0].token_ids, alone[2].token_ids]


def test_a_stream_starts_at_once_and_equals_generate_when_it_joins_a_run(llama):
    long = Request("a long one", (), GenerationOptions(max_new_tokens=60))
    short = Request("stream me", (), GenerationOptions(max_new_tokens=12))
    want = llama.engine.generate([short])[0]
    pieces: list = []
    started = threading.Event()

    def stream_from_another_thread(*_: object) -> None:
        if not started.is_set():
            started.set()
            threading.Thread(
                target=lambda: pieces.extend(llama.engine.stream(short)), daemon=True
            ).start()

    handle = llama.model.register_forward_hook(stream_from_another_thread)
    try:
        (running,) = llama.engine.submit([long])
        running.result(60)
    finally:
        handle.remove()
    for _ in range(600):
        if pieces and not isinstance(pieces[-1], str):
            break
        threading.Event().wait(0.05)
    final = pieces[-1]
    assert "".join(p for p in pieces[:-1]) == want.text == final.text
    assert final.token_ids == want.token_ids


def test_seeded_sampling_is_the_same_whoever_shares_the_steps(llama):
    sampled = Request("tell me", (), GenerationOptions(max_new_tokens=16, temperature=0.9, seed=7))
    alone = llama.engine.generate([sampled])[0]
    others = [Request(p, (), GenerationOptions(max_new_tokens=20)) for p in PROMPTS[:4]]
    joins = _JoinAt(llama, [sampled], [5])
    try:
        llama.engine.generate(others)
        got = joins.futures[0].result(60)
    finally:
        joins.close()
    assert got.token_ids == alone.token_ids


def test_a_soak_of_mixed_requests_leaves_no_row_contaminated(llama):
    """500 requests with mixed steering and lengths, arriving in waves while others run:
    each equals its request alone (steered rows never leak into their neighbours)."""
    requests = _requests(llama, 500, seed=11)
    by_key: dict = {}
    for r in requests:
        by_key.setdefault(r.key(), r)
    alone = {k: llama.engine.generate([r])[0].token_ids for k, r in by_key.items()}
    rng = random.Random(3)
    joins = _JoinAt(llama, requests[50:], [rng.randrange(1, 400) for _ in requests[50:]])
    try:
        first = llama.engine.generate(requests[:50])
        while joins.plan:
            llama.engine.generate([Request("again", (), GenerationOptions(max_new_tokens=24))])
        rest = [joins.futures[i].result(120) for i in range(len(requests) - 50)]
    finally:
        joins.close()
    got = first + rest
    bad = [i for i, (r, g) in enumerate(zip(requests, got)) if g.token_ids != alone[r.key()]]
    assert not bad, f"{len(bad)} contaminated rows, first {bad[:5]}"


def test_rows_beyond_the_cap_wait_for_a_row_to_leave(llama, monkeypatch):
    monkeypatch.setattr(worker, "MAX_MERGED_ROWS", 3)
    requests = _requests(llama, 9, seed=4)
    alone = [llama.engine.generate([r])[0].token_ids for r in requests]
    live: list[int] = []
    handle = llama.model.register_forward_pre_hook(
        lambda m, args, kwargs: live.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = [g.token_ids for g in llama.engine.generate(requests)]
    finally:
        handle.remove()
    assert got == alone
    assert max(live) <= 3


def test_a_model_whose_cache_cannot_take_rows_keeps_whole_batch_generate(llama):
    """Sliding-window or recurrent caches: calls still merge (equal options), never join."""
    engine = llama.engine
    engine.joining = False
    try:
        requests = _requests(llama, 4, seed=9)
        alone = [engine.generate([r])[0].token_ids for r in requests]
        assert [g.token_ids for g in engine.generate(requests)] == alone
    finally:
        engine.joining = True
    assert engine.joining


def test_kv_columns_that_every_row_pads_are_cut(llama):
    """A long prompt that leaves must not keep its width: the batch narrows to what the
    remaining rows need."""
    from actsteer.schedule.batch import RunningBatch

    widths: list[int] = []
    original = RunningBatch.step

    def spy(self):
        widths.append(self.width)
        return original(self)

    RunningBatch.step = spy  # type: ignore[method-assign]
    try:
        long = Request("word " * 60, (), GenerationOptions(max_new_tokens=2))
        short = Request("hi", (), GenerationOptions(max_new_tokens=20))
        llama.engine.generate([long, short])
    finally:
        RunningBatch.step = original  # type: ignore[method-assign]
    assert widths[0] >= 300 and widths[-1] < 40


def test_a_constrained_row_joins_a_run_started_before_any_grammar_existed():
    """The first grammar of a model may be compiled while a run decodes: the joiner still
    decodes under it, exactly as alone."""
    from conftest import build_tiny

    from actsteer.constrain import Constraint

    fresh = build_tiny("llama", seed=5)
    constrained = Request(
        [{"role": "user", "content": "json please"}],
        options=GenerationOptions(max_new_tokens=20),
        constraint=Constraint.json_object(),
    )
    joins = _JoinAt(fresh, [constrained], [3])
    try:
        fresh.engine.generate([Request("plain", (), GenerationOptions(max_new_tokens=30))])
        joined = joins.futures[0].result(60)
    finally:
        joins.close()
    alone = fresh.engine.generate([constrained])[0]
    assert joined.token_ids == alone.token_ids
    assert joined.text.lstrip().startswith("{")


def test_a_joiner_that_fails_fails_alone_and_the_run_goes_on(llama, monkeypatch):
    """A row whose own processing raises (here: its sampler) fails its own call; the rows
    decoding beside it, and the calls that join after it, give what they give alone."""
    from actsteer.runtime.generation import SeededSampler

    def broken(self, input_ids, scores):
        raise RuntimeError("sampler broke")

    greedy = [Request(p, (), GenerationOptions(max_new_tokens=20)) for p in PROMPTS[:3]]
    alone = [llama.engine.generate([r])[0].token_ids for r in greedy]
    sampled = Request("sample me", (), GenerationOptions(max_new_tokens=8, temperature=0.8))
    monkeypatch.setattr(SeededSampler, "__call__", broken)
    joins = _JoinAt(llama, [sampled, greedy[2]], [3, 6])
    try:
        first = llama.engine.generate(greedy[:2])
        with pytest.raises(RuntimeError, match="sampler broke"):
            joins.futures[0].result(60)
        late = joins.futures[1].result(60)
    finally:
        joins.close()
    assert [g.token_ids for g in first] + [late.token_ids] == alone


def test_a_call_with_many_rows_is_not_overtaken_by_later_small_ones(llama, monkeypatch):
    """Rows join first come, first served: a call that does not fit the running batch waits
    for room, and calls that came after it wait behind it (they do not starve it)."""
    monkeypatch.setattr(worker, "MAX_MERGED_ROWS", 3)
    big = [Request(f"big {i}", (), GenerationOptions(max_new_tokens=6)) for i in range(3)]
    small = Request("small", (), GenerationOptions(max_new_tokens=6))
    order: list[int] = []
    futures: dict[str, list] = {}

    def submit(*_: object) -> None:
        if not futures:  # one call of 3 rows (no room beside the first), then a small one
            (job,) = llama.engine._jobs(big, CallCancel(), prepare_here=True)
            futures["big"] = worker.submit(job)
            futures["small"] = llama.engine.submit([small])

    handle = llama.model.register_forward_hook(submit)
    remove = llama.engine.observe(lambda rows: order.append(rows))
    try:
        llama.engine.generate([Request("first", (), GenerationOptions(max_new_tokens=12))])
        for f in futures["big"] + futures["small"]:
            f.result(60)
    finally:
        handle.remove()
        remove()
    assert order == [1, 3, 1]  # the big call ran before the small one that came after it


@pytest.mark.parametrize("at", [1, 3])  # the run's first prefill, or a decode step
def test_a_call_that_arrives_during_a_prefill_is_prefilled_before_the_next_step(llama, at):
    """Time to first token under load: an arrival waits for the forward in flight and then its
    own prefill, never for a decode step as well (the old loop let one step run between)."""
    first = Request("a long one", (), GenerationOptions(max_new_tokens=20))
    second = Request("the second call", (), GenerationOptions(max_new_tokens=4))
    third = Request("the third call", (), GenerationOptions(max_new_tokens=4))
    alone = [llama.engine.generate([r])[0] for r in (second, third)]
    worker.call(lambda: None)  # that run has ended, so the first call starts a run of its own
    widths: list[int] = []
    futures: list = []

    def forward(module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        widths.append(ids.shape[1])
        if len(widths) in (at, at + 1):  # the second comes, then the third during its prefill
            futures.extend(llama.engine.submit([second if len(widths) == at else third]))

    handle = llama.model.register_forward_pre_hook(forward, with_kwargs=True)
    try:
        llama.engine.generate([first])
        got = [f.result(60) for f in futures]
    finally:
        handle.remove()
    assert widths[0] > 1 and all(w == 1 for w in widths[1:at])  # the first row's own forwards
    assert widths[at] > 1 and widths[at + 1] > 1  # the second's prefill, then the third's
    assert [g.token_ids for g in got] == [g.token_ids for g in alone]


def test_arrivals_that_end_at_once_cannot_hold_the_running_rows_back(llama, monkeypatch):
    """Calls that each arrive during the previous one's prefill and end at their first token
    never fill the batch; the loop still lets the running row step after ``MAX_MERGED_ROWS``
    rows of prefill."""
    monkeypatch.setattr(worker, "MAX_MERGED_ROWS", 3)
    first = Request("a long one", (), GenerationOptions(max_new_tokens=12))
    quick = [Request(f"quick {i}", (), GenerationOptions(max_new_tokens=1)) for i in range(8)]
    want = llama.engine.generate([first])[0]
    worker.call(lambda: None)  # that run has ended, so the first call starts a run of its own
    widths: list[int] = []
    futures: list = []

    def forward(module, args, kwargs) -> None:
        widths.append(kwargs["input_ids"].shape[1])
        if widths[-1] > 1 and len(futures) < len(quick):  # one more during every prefill
            futures.extend(llama.engine.submit([quick[len(futures)]]))

    handle = llama.model.register_forward_pre_hook(forward, with_kwargs=True)
    try:
        got = llama.engine.generate([first])[0]
        [f.result(60) for f in futures]
    finally:
        handle.remove()
    runs, n = [], 0
    for w in widths:  # lengths of the stretches of prefills between decode steps
        n = n + 1 if w > 1 else 0
        runs.append(n)
    # the first's own prefill, then 3 joiners' (without the cap, all 8 in one stretch)
    assert len(futures) == len(quick) and max(runs) == 1 + 3, widths
    assert got.token_ids == want.token_ids
