"""The one thread that runs actsteer's forward passes, merging generate calls that wait at the
same time into one batched generate.

Why one thread: torch on CPU keeps an OpenMP thread team per calling thread, and while two teams
are alive libgomp throttles its spin-waiting, so every op of every decode step pays a thread
wake-up (15 to 40 % slower on a 2-core machine, ``bench/batch.py``). Generating in whichever
thread calls (a thread pool, ``asyncio.to_thread``'s executor, a streaming thread) leaves teams
behind that slow everything after. Here every generate, stream and activation read runs on one
thread, whatever thread or task asks for it.

And since calls queue there anyway, they batch: calls waiting together with equal options are
merged (up to ``MAX_MERGED_ROWS`` rows) into one padded generate, so a thread pool of ``invoke``
calls or an ``asyncio.gather`` of ``ainvoke`` calls costs about one batched generate instead of
one each. Rows stay independent (per-row steering, seeded sampling, cancellation and streaming),
so a merged row gives what the call alone gives.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .generation import CallCancel

if TYPE_CHECKING:
    from .generation import Generation, TokenQueue
    from .model import SteeredModel

T = TypeVar("T")
P = ParamSpec("P")

#: Most rows merged into one generate; a single call with more rows still runs (alone).
MAX_MERGED_ROWS = 32


@dataclass(eq=False)
class Job:
    """One generate call: prompts, per-row steering and options, prepared by the caller (sync
    calls, which then fail early and in their own thread) or on the worker (async calls)."""

    sm: SteeredModel
    prompts: list[Any]
    steering: list[Any]
    options: tuple[Any, ...]
    """``(max_new_tokens, temperature, top_p, stop, seed)``: calls merge only when equal."""
    rows: tuple[list[list[int]], list[Any]] | None = None
    """``(encoded, compiled)`` once prepared."""
    stream: TokenQueue | None = None
    """For a one-row streaming call: where its new tokens go, step by step."""
    cancel: CallCancel = field(default_factory=CallCancel)
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple[Any, ...]:
        return (id(self.sm), self.options)


@dataclass(eq=False)
class _Call:
    """Any other model work (reading activations): runs alone, in order."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


class _Worker:
    """A daemon thread serving a queue (started on first use, and again after a fork)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Job | _Call] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def here(self) -> bool:
        """Whether the calling thread is the worker (whose calls run directly)."""
        return threading.current_thread() is self._thread

    def submit(self, item: Job | _Call) -> Future:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="actsteer-generate", daemon=True
                )
                self._thread.start()
        self._queue.put(item)
        return item.future

    def _loop(self) -> None:
        held: collections.deque[Job | _Call] = collections.deque()
        while True:
            group: list[Job] = []
            try:
                if not held:
                    held.append(self._queue.get())
                while True:  # everything waiting now may join this round
                    try:
                        held.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if isinstance(held[0], _Call):
                    _run_call(held.popleft())
                    continue
                group = _take_group(held)
                if group:
                    _run_group(group)
            except BaseException as exc:  # never die with callers waiting: fail them instead
                for item in [*group, *held]:
                    if not item.future.done():
                        item.future.set_exception(exc)
                held.clear()
            finally:
                del group  # hold no models or prompts while idle


def _run_call(call: _Call) -> None:
    if not call.future.set_running_or_notify_cancel():
        return
    try:
        result = call.fn()
    except BaseException as exc:  # the caller re-raises it
        call.future.set_exception(exc)
    else:
        call.future.set_result(result)


def _take_group(held: collections.deque[Job | _Call]) -> list[Job]:
    """The oldest job and every later one that can share its generate, prepared; cancelled
    jobs are dropped and jobs with invalid input fail alone."""
    group: list[Job] = []
    rows = 0
    key = None
    for job in list(held):
        if not isinstance(job, Job):
            continue
        if key is not None and (job.key != key or rows + len(job.prompts) > MAX_MERGED_ROWS):
            continue
        held.remove(job)
        if not job.future.set_running_or_notify_cancel():  # its caller has gone
            if job.stream is not None:
                job.stream.end()
            continue
        if job.rows is None:
            try:
                job.rows = job.sm._prepare_rows(job.prompts, job.steering)
            except Exception as exc:
                job.future.set_exception(exc)
                continue
        group.append(job)
        rows += len(job.prompts)
        key = job.key
    return group


def _run_group(group: list[Job]) -> None:
    """One generate for the group; if a merged generate fails (say, out of memory for the
    padded batch), each non-streaming job gets its own try."""
    encoded: list[list[int]] = []
    compiled: list[Any] = []
    cancels: list[CallCancel] = []
    streams: list[tuple[int, TokenQueue]] = []
    for job in group:
        enc, comp = job.rows  # type: ignore[misc]
        if job.stream is not None:
            streams.append((len(encoded), job.stream))
        encoded += enc
        compiled += comp
        cancels += [job.cancel] * len(enc)
    sm, options = group[0].sm, group[0].options
    try:
        gens = sm._generate_rows(encoded, compiled, cancels, *options, streams=streams)
    except BaseException as exc:
        retry = isinstance(exc, Exception) and len(group) > 1
        for job in group:
            if not (retry and job.stream is None):
                job.future.set_exception(exc)  # its caller re-raises it
        if retry:
            for job in group:
                if job.stream is None:
                    _run_group([job])
        return
    finally:
        for _, stream in streams:
            stream.end()
    start = 0
    for job in group:
        job.future.set_result(gens[start : start + len(job.prompts)])
        start += len(job.prompts)


_WORKER = _Worker()


def here() -> bool:
    """Whether the calling thread is actsteer's generation thread."""
    return _WORKER.here()


def submit(job: Job) -> Future:
    """Queue ``job``; its future gets one ``Generation`` per prompt."""
    return _WORKER.submit(job)


def wait(job: Job) -> list[Generation]:
    """Run ``job`` on the worker and block until its rows are done; an interrupt while waiting
    (KeyboardInterrupt) stops the job's rows, or drops the job if still queued."""
    future = _WORKER.submit(job)
    try:
        return future.result()
    except BaseException:
        job.cancel.set()
        future.cancel()
        raise


async def run(job: Job) -> list[Generation]:
    """Run ``job`` on the worker without blocking the event loop; cancelling the awaiting task
    stops the job's rows (or drops the job if it is still queued)."""
    future = _WORKER.submit(job)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        job.cancel.set()
        raise


def call(fn: Callable[[], T], *, cancel: CallCancel | None = None) -> T:
    """Run ``fn`` on the worker (directly when already there) and return its result. If the
    wait is interrupted, ``fn`` is dropped when still queued; once started it runs to its end,
    unless it watches ``cancel``, which the interrupt sets (long work such as distillation)."""
    if _WORKER.here():
        return fn()
    future = _WORKER.submit(_Call(fn))
    try:
        return future.result()
    except BaseException:
        if cancel is not None:
            cancel.set()
        future.cancel()
        raise


async def acall(fn: Callable[[], T]) -> T:
    """``call`` for asyncio: wait for ``fn`` on the worker without blocking the event loop."""
    if _WORKER.here():
        return fn()
    return await asyncio.wrap_future(_WORKER.submit(_Call(fn)))


def on_worker(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorator: the function's tensor work runs on the worker, whichever thread calls it."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return call(functools.partial(fn, *args, **kwargs))

    return wrapper


if hasattr(os, "register_at_fork"):  # a forked child has no worker thread: start afresh
    os.register_at_fork(after_in_child=_WORKER.__init__)
