"""The thread that runs actsteer's async generations, merging calls that wait at the same time
into one batched generate.

Why one thread rather than ``asyncio.to_thread``: torch on CPU keeps an OpenMP thread team per
calling thread, and while two teams are alive libgomp throttles its spin-waiting, so every op of
every decode step pays a thread wake-up (15 to 40 % slower on a 2-core machine). The default
executor spreads calls over several threads, each leaving a team behind. One worker keeps async
generation on one team; and since calls queue there anyway, it batches them: n concurrent
``agenerate`` calls with equal options cost one padded generate instead of n. Rows stay
independent (per-row steering, per-row seeded sampling, per-row cancellation), so a merged row
gives what the call alone gives.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .generation import Generation
    from .model import SteeredModel

#: Most rows merged into one generate; a single call with more rows still runs (alone).
MAX_MERGED_ROWS = 32


@dataclass(eq=False)
class Job:
    """One async generate call: its prompts, per-row steering and options."""

    sm: SteeredModel
    prompts: list[Any]
    steering: list[Any]
    options: tuple[Any, ...]
    """``(max_new_tokens, temperature, top_p, stop, seed)``: calls merge only when equal."""
    future: Future = field(default_factory=Future)
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple[Any, ...]:
        return (id(self.sm), self.options)


class _Worker:
    """A daemon thread serving a queue of jobs (started on first use, and again after a fork)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, job: Job) -> Future:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="actsteer-generate", daemon=True
                )
                self._thread.start()
        self._queue.put(job)
        return job.future

    def _loop(self) -> None:
        held: collections.deque[Job] = collections.deque()
        while True:
            if not held:
                held.append(self._queue.get())
            while True:  # everything waiting now may join this round
                try:
                    held.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            group = _take_group(held)
            if group:
                _run_group(group)
            del group  # drop references to models and prompts while idle


def _take_group(held: collections.deque[Job]) -> list[Job]:
    """The oldest job and every later one that can share its generate, prepared; jobs that
    were cancelled while queued are dropped, jobs whose input is invalid fail alone."""
    group: list[Job] = []
    rows = 0
    key = None
    for job in list(held):
        if key is not None and (job.key != key or rows + len(job.prompts) > MAX_MERGED_ROWS):
            continue
        held.remove(job)
        if not job.future.set_running_or_notify_cancel():
            continue
        try:
            job.rows = job.sm._prepare_rows(job.prompts, job.steering)  # type: ignore[attr-defined]
        except Exception as exc:
            job.future.set_exception(exc)
            continue
        group.append(job)
        rows += len(job.prompts)
        key = job.key
    return group


def _run_group(group: list[Job]) -> None:
    encoded: list[list[int]] = []
    compiled: list[Any] = []
    cancels: list[threading.Event] = []
    for job in group:
        enc, comp = job.rows  # type: ignore[attr-defined]
        encoded += enc
        compiled += comp
        cancels += [job.cancel] * len(enc)
    try:
        gens = group[0].sm._generate_rows(encoded, compiled, cancels, *group[0].options)
    except BaseException as exc:  # every caller of the group re-raises it
        for job in group:
            job.future.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
        return
    start = 0
    for job in group:
        job.future.set_result(gens[start : start + len(job.prompts)])
        start += len(job.prompts)


_WORKER = _Worker()


async def run(job: Job) -> list[Generation]:
    """Queue ``job`` on the generation thread and wait for its rows without blocking the loop;
    cancelling the awaiting task stops the job's rows (or drops the job if still queued)."""
    future = _WORKER.submit(job)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        job.cancel.set()
        raise
