"""The one thread that runs actsteer's forward passes, merging jobs that wait at the same time
into one batched run. It runs what it is handed (``Job`` values from an engine, plain callables)
and knows nothing of models: a job brings its merge key, its row count and the function that
runs a group of such jobs.

Why one thread: torch on CPU keeps an OpenMP thread team per calling thread, and while two teams
are alive libgomp throttles its spin-waiting, so every op of every decode step pays a thread
wake-up (15 to 40 % slower on a 2-core machine, ``bench/batch.py``). Generating in whichever
thread calls (a thread pool, ``asyncio.to_thread``'s executor, a streaming thread) leaves teams
behind that slow everything after. Here every generate, stream and activation read runs on one
thread, whatever thread or task asks for it.

And since calls queue there anyway, they batch: jobs waiting together with equal keys (for
``LocalEngine``: the same engine) are merged (up to ``MAX_MERGED_ROWS`` rows) into one run, and
a run may take the jobs that arrive while it decodes (``joiners``: continuous batching, see
``actsteer.schedule``), so a thread pool of ``invoke`` calls or an ``asyncio.gather`` of
``ainvoke`` calls costs about one batched generate instead of one each. Rows stay independent
(per-row steering, seeded sampling, cancellation and streaming), so a merged row gives what the
call alone gives.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import os
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from ..engine import CallCancel

T = TypeVar("T")
P = ParamSpec("P")

#: Most rows merged into one generate; a single call with more rows still runs (alone).
MAX_MERGED_ROWS = 32


@dataclass(eq=False)
class Job:
    """A unit of batched work handed to the worker by an engine. The worker knows nothing of
    what it holds: jobs with equal ``key`` waiting at the same time run as one ``run(group)``
    call, which returns one result per job."""

    key: Hashable
    """Jobs with equal keys may share one run (same engine, same options)."""
    rows: int
    """Batch rows this job adds to a merged run (at most ``MAX_MERGED_ROWS`` merge)."""
    run: Callable[[list[Job]], list[Any]]
    """Runs a group of jobs with this key as one call; one result per job, in order."""
    payload: Any = None
    """The engine's data for this job (prompts, compiled steering, a stream queue, ...)."""
    prepare: Callable[[Job], None] | None = None
    """Work to do on the worker before the job can run (an async caller's encoding); when it
    raises, this job alone fails."""
    cancel: CallCancel = field(default_factory=CallCancel)
    retry_alone: bool = True
    """If a merged run fails, run this job again alone (False for streams, already started)."""
    future: Future = field(default_factory=Future)


@dataclass(eq=False)
class _Call:
    """Any other model work (reading activations): runs alone, in order."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)
    cancel: CallCancel | None = None
    """Set when the interpreter exits while ``fn`` runs (long work that watches it stops)."""


class _Worker:
    """A daemon thread serving a queue (started on first use, and again after a fork)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Job | _Call | list[Job]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.waiting = 0
        """Jobs and calls queued and not yet started (``waiting()``)."""
        self._running: list[Job | _Call] = []
        self._exiting = False
        self._held: collections.deque[Job | _Call] = collections.deque()

    def here(self) -> bool:
        """Whether the calling thread is the worker (whose calls run directly)."""
        return threading.current_thread() is self._thread

    def submit(self, item: Job | _Call | list[Job]) -> None:
        """Queue an item; a list of jobs arrives at once, so they can all merge."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="actsteer-generate", daemon=True
                )
                self._thread.start()
            self.waiting += len(item) if isinstance(item, list) else 1
        self._queue.put(item)

    def joiners(self, key: Hashable, room: int) -> list[Job]:
        """Jobs with ``key`` waiting now, prepared and started, up to ``room`` rows: rows that
        join a run at its next step (continuous batching, on the worker only). None while
        other work waits (a ``_Call``, another model's job), so a stream of arrivals never
        starves it: the run drains, that work runs, then the arrivals."""
        held = self._held
        while True:
            try:
                _hold(held, self._queue.get_nowait())
            except queue.Empty:
                break
        others = any(isinstance(item, _Call) or item.key != key for item in held)
        if room <= 0 or self._exiting or others:
            return []
        before = len(held)
        joined = _take_group(held, key=key, room=room)
        self._started(before - len(held))
        # what the exit handler would cancel: the run's jobs still open (not every job served)
        self._running = [j for j in self._running if not j.future.done()] + joined
        return joined

    def _loop(self) -> None:
        held = self._held
        while True:
            group: list[Job] = []
            try:
                if not held:
                    _hold(held, self._queue.get())
                while True:  # everything waiting now may join this round
                    try:
                        _hold(held, self._queue.get_nowait())
                    except queue.Empty:
                        break
                if self._exiting:  # drop what waits; the exit handler is joining this thread
                    for item in held:
                        item.future.cancel()
                    return
                if isinstance(held[0], _Call):
                    self._started(1)
                    self._running = [held[0]]
                    _run_call(held.popleft())
                    continue
                before = len(held)
                group = _take_group(held)
                self._started(before - len(held))
                if group:
                    self._running = list(group)
                    _run_group(group)
            except BaseException as exc:  # never die with callers waiting: fail them instead
                for item in [*group, *held]:
                    if not item.future.done():
                        item.future.set_exception(exc)
                self._started(len(held))
                held.clear()
            finally:
                del group  # hold no models or prompts while idle
                self._running = []

    def exit(self, timeout: float = 30.0) -> None:
        """At interpreter exit: cancel the rows running (they stop at their next decode step),
        drop what waits, and wait for the thread to leave torch. A daemon thread still inside a
        generate when Python finalizes aborts the process ("terminate called without an active
        exception"): a script that stops reading a stream early and ends would crash."""
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return
        self._exiting = True
        for item in list(self._running):
            if item.cancel is not None:
                item.cancel.set()
        self._queue.put([])  # wakes an idle thread, which sees _exiting and returns
        thread.join(timeout)

    def _started(self, n: int) -> None:
        with self._lock:
            self.waiting -= n


def _hold(held: collections.deque[Job | _Call], item: Job | _Call | list[Job]) -> None:
    if isinstance(item, list):
        held.extend(item)
    else:
        held.append(item)


def _run_call(call: _Call) -> None:
    if not call.future.set_running_or_notify_cancel():
        return
    try:
        result = call.fn()
    except BaseException as exc:  # the caller re-raises it
        call.future.set_exception(exc)
    else:
        call.future.set_result(result)


def _take_group(
    held: collections.deque[Job | _Call], *, key: Hashable = None, room: int | None = None
) -> list[Job]:
    """The oldest job (or the oldest with ``key``) and every later one that can share its
    generate, up to ``room`` rows, prepared; cancelled jobs are dropped and jobs with invalid
    input fail alone."""
    group: list[Job] = []
    rows = 0
    joining = key is not None  # for a running run: first come, first served
    room = MAX_MERGED_ROWS if room is None else room
    for job in list(held):
        if not isinstance(job, Job):
            continue
        if key is not None and job.key != key:
            continue
        if key is not None and rows + job.rows > room:
            if joining and not job.future.cancelled():
                break  # no later, smaller job overtakes it: the run drains to its size
            continue
        held.remove(job)
        if not job.future.set_running_or_notify_cancel():  # its caller has gone
            continue
        if job.prepare is not None:
            try:
                job.prepare(job)
            except Exception as exc:
                job.future.set_exception(exc)
                continue
        group.append(job)
        rows += job.rows
        key = job.key
    return group


def _run_group(group: list[Job]) -> None:
    """One run for the group; if a merged run fails (say, out of memory for the padded batch),
    each job that may be retried gets its own try."""
    try:
        results = group[0].run(group)
    except BaseException as exc:
        group = [job for job in group if not job.future.done()]  # a run may finish jobs early
        retry = isinstance(exc, Exception) and len(group) > 1
        for job in group:
            if not (retry and job.retry_alone):
                job.future.set_exception(exc)  # its caller re-raises it
        if retry:
            for job in group:
                if job.retry_alone:
                    _run_group([job])
        return
    for job, result in zip(group, results, strict=True):
        if not job.future.done():  # a continuous run sets each job's result as it ends
            job.future.set_result(result)


_WORKER = _Worker()


def here() -> bool:
    """Whether the calling thread is actsteer's generation thread."""
    return _WORKER.here()


def waiting() -> int:
    """How many jobs and calls are queued for the generation thread and not yet started (for
    monitoring, and for tests that must know their calls have queued up)."""
    return _WORKER.waiting


def submit(*jobs: Job) -> list[Future]:
    """Queue ``jobs`` together (they may all merge); each future gets its job's result."""
    _WORKER.submit(list(jobs))
    return [job.future for job in jobs]


def joiners(key: Hashable, room: int) -> list[Job]:
    """On the worker, inside a run: the jobs with ``key`` that arrived meanwhile (prepared,
    at most ``room`` rows), to join the run at its next step."""
    if not _WORKER.here():
        raise RuntimeError("worker.joiners is for runs on actsteer's generation thread")
    return _WORKER.joiners(key, room)


def call(fn: Callable[[], T], *, cancel: CallCancel | None = None) -> T:
    """Run ``fn`` on the worker (directly when already there) and return its result. If the
    wait is interrupted, ``fn`` is dropped when still queued; once started it runs to its end,
    unless it watches ``cancel``, which the interrupt sets (long work such as distillation)."""
    if _WORKER.here():
        return fn()
    item = _Call(fn, cancel=cancel)
    _WORKER.submit(item)
    future = item.future
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
    item = _Call(fn)
    _WORKER.submit(item)
    return await asyncio.wrap_future(item.future)


def on_worker(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorator: the function's tensor work runs on the worker, whichever thread calls it."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return call(functools.partial(fn, *args, **kwargs))

    return wrapper


if hasattr(os, "register_at_fork"):  # a forked child has no worker thread: start afresh
    os.register_at_fork(after_in_child=_WORKER.__init__)
atexit.register(lambda: _WORKER.exit())
