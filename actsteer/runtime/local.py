"""LocalEngine: the in-process ``Engine``. Requests become rows (token ids, compiled steering,
grammars), rows become ``worker.Job`` values, and the generation thread runs them: as one
continuous run that later calls join (``actsteer.schedule``), or, for models whose cache cannot
take rows in and out, as one left-padded Hugging Face ``generate`` per merged group. A stream
is read on the caller's thread (``streaming.read_stream``)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import resolve
from ..apply import combine
from ..constrain.decode import Grammars
from ..core.steering import Steering, SteeringLike
from ..engine import CallCancel, Generation, GenerationOptions, Request, checked
from ..errors import GenerationError
from ..prompts import Prompt, context_window, fit
from ..schedule.batch import supports_joining
from ..schedule.loop import Run
from ..tools.formats import format_for
from ..tools.spec import ToolSpec
from . import worker
from .generation import TokenQueue
from .rows import Rows, generate_rows
from .streaming import read_stream

if TYPE_CHECKING:
    from .surface import Steerable


class LocalEngine:
    """The ``Engine`` for a ``SteeredModel`` in this process (``SteeredModel.engine``)."""

    def __init__(self, sm: Steerable) -> None:
        self.sm = sm
        self._grammars: Grammars | None = None
        self._joins: bool | None = None
        """Whether this model's cache can take rows in and out (probed once)."""
        self._joining_on = True
        self._observers: list[tuple[Callable[[int], None] | None, Callable | None]] = []

    @property
    def model_name(self) -> str:
        return self.sm.fingerprint.name

    @property
    def context_window(self) -> int | None:
        """The most tokens a request may hold, prompt and reply together."""
        return context_window(self.sm.model.config, self.sm.tokenizer)

    def tokenize(self, prompt: Prompt, tools: Sequence[ToolSpec] = ()) -> list[int]:
        """The ids a request with ``prompt`` sends (chat template and tools included)."""
        return self.sm.encode(prompt, tools)

    def resolve(
        self, steering: SteeringLike, *, coeff: float | None = None, positions: str | None = None
    ) -> tuple[Steering, ...]:
        return resolve.resolve(self.sm, steering, coeff=coeff, positions=positions)

    def observe(
        self,
        before: Callable[[int], None] | None = None,
        after: Callable[[list[Generation]], None] | None = None,
    ) -> Callable[[], None]:
        """Watch the generation thread: ``before(rows)`` as rows are admitted to a batch (a
        continuous run's first rows, then each group that joins it), ``after(generations)``
        as rows end (batch-size metrics; tests use it to hold the thread and to inject
        failures: an exception in ``before`` fails those rows' admission). Returns a function
        that removes the observer."""
        entry = (before, after)
        self._observers.append(entry)
        return lambda: self._observers.remove(entry)

    # -- the Engine protocol ----------------------------------------------------------------
    def generate(
        self, requests: Sequence[Request], *, cancel: threading.Event | None = None
    ) -> list[Generation]:
        jobs = self._jobs(requests, CallCancel(cancel), prepare_here=True)
        if worker.here():
            return _in_order(jobs, [self._run([job])[0] for job in jobs])
        futures = worker.submit(*jobs)
        try:
            return _in_order(jobs, [f.result() for f in futures])
        except BaseException:
            for job in jobs:  # interrupted (or failed): stop the rest, drop what is queued
                job.cancel.set()
                job.future.cancel()
            raise

    def submit(self, requests: Sequence[Request]) -> list[Future]:
        futures: list[Future] = []
        jobs = []
        for r in checked(requests):
            try:
                job = self._jobs([r], CallCancel(), prepare_here=True)[0]
            except Exception as exc:  # this row alone is refused (a prompt over the window)
                futures.append(_failed(exc))
                continue
            jobs.append(job)
            futures.append(_single(job))
        if jobs:
            worker.submit(*jobs)
        return futures

    async def agenerate(self, requests: Sequence[Request]) -> list[Generation]:
        # encoding and compiling run on the worker: presets may read or extract vectors
        jobs = self._jobs(requests, CallCancel(), prepare_here=False)
        futures = worker.submit(*jobs)
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except BaseException:
            for job in jobs:
                job.cancel.set()
                job.future.cancel()
            raise
        return _in_order(jobs, results)

    def stream(
        self,
        request: Request,
        *,
        timeout: float | None = 600.0,
        cancel: threading.Event | None = None,
    ) -> Iterator[str | Generation]:
        if worker.here():
            raise GenerationError("stream() cannot be called from actsteer's generation thread")
        job = self._jobs([request], CallCancel(cancel), prepare_here=True)[0]
        job.payload.stream = TokenQueue()
        job.retry_alone = False
        return read_stream(self.sm.handle, job, timeout)

    async def astream(
        self, request: Request, *, timeout: float | None = 600.0
    ) -> AsyncIterator[str | Generation]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        done = object()
        task = loop.create_future()

        def put(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: no one is reading
                loop.call_soon_threadsafe(items.put_nowait, item)

        def pump() -> None:
            try:
                for item in self.stream(request, timeout=timeout, cancel=cancel):
                    put(item)
            except BaseException as exc:
                put(exc)
            finally:
                put(done)
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(lambda: task.done() or task.set_result(None))

        # a thread of its own, not the loop's default executor: a stream holds its thread for
        # its whole life, and that pool (cores + 4 threads) held later streams back
        thread = threading.Thread(
            target=contextvars.copy_context().run, args=(pump,), name="actsteer-astream"
        )
        thread.daemon = True
        thread.start()
        try:
            while True:
                item = await items.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            await asyncio.shield(task)

    # -- jobs -------------------------------------------------------------------------------
    def _jobs(
        self, requests: Sequence[Request], cancel: CallCancel, *, prepare_here: bool
    ) -> list[worker.Job]:
        """One job per distinct options (requests in a job share one generate); prepared now
        (a bad prompt or steering fails in the caller's thread) or on the worker."""
        groups: dict[GenerationOptions, list[int]] = {}
        for i, r in enumerate(checked(requests)):
            groups.setdefault(r.options, []).append(i)
        joining = self.joining
        jobs = []
        for options, index in groups.items():
            job = worker.Job(
                key=(id(self),) if joining else (id(self), options),
                rows=len(index),
                run=self._run,
                payload=Rows([requests[i] for i in index], index),
                prepare=None if prepare_here else self._prepare,
                cancel=cancel,
            )
            if prepare_here:
                self._prepare(job)
            jobs.append(job)
        return jobs

    def _prepare(self, job: worker.Job) -> None:
        rows: Rows = job.payload
        window = self.context_window
        fitted = [  # nothing runs past the window: refused, or truncated as the request asks
            fit(r.prompt, lambda p, r=r: self.sm.encode(p, r.tools), r.options.max_new_tokens,
                window, r.truncate)
            for r in rows.requests
        ]  # fmt: skip
        rows.encoded = [f.ids for f in fitted]
        rows.dropped = [f.dropped_tokens for f in fitted]
        norms = self.sm.activation_norms() if any(r.steering for r in rows.requests) else {}
        rows.compiled = [
            combine.compile_row(r.steering, self.sm.fingerprint, norms) for r in rows.requests
        ]
        rows.grammars = [self._grammar(r) for r in rows.requests]

    def _grammar(self, request: Request) -> Any:
        """The compiled grammar a request's reply follows, or None."""
        constraint = request.constraint
        if constraint is None and request.tools:
            fmt = format_for(self.sm.tokenizer)
            constraint = fmt.constraint(
                request.tools, request.tool_choice, request.parallel_tool_calls
            )
        if constraint is None:
            return None
        if self._grammars is None:
            vocab = self.sm.model.get_output_embeddings().weight.shape[0]
            self._grammars = Grammars(self.sm.tokenizer, vocab, self.sm.eos_token_ids)
        return self._grammars.compile(constraint)

    @property
    def joining(self) -> bool:
        """Whether calls join running batches (continuous batching, ``actsteer.schedule``):
        any options, at any decode step. Models whose KV cache cannot take rows in and out
        (sliding-window, recurrent) merge only calls that wait together with equal options."""
        if not self._joining_on:
            return False
        if self._joins is None:
            self._joins = worker.call(partial(supports_joining, self.sm.handle))
        return self._joins

    @joining.setter
    def joining(self, on: bool) -> None:
        """Turn continuous batching off (``False``: calls merge only when they wait together
        with equal options, as before it existed; benchmarks compare the two) or back on where
        the model supports it. Calls already queued keep the mode they were made in."""
        self._joining_on = bool(on)

    def _run(self, group: list[worker.Job]) -> list[list[Generation]]:
        """Run a merged group on the worker; one list of rows per job."""
        if len(group[0].key) == 1:  # made to join (``joining`` when the call was made)
            grammars = lambda: self._grammars  # noqa: E731 - compiled lazily, maybe mid-run
            return Run(self.sm.handle, grammars, group[0].key, self._observers).run(group)
        return self._run_whole(group)

    def _run_whole(self, group: list[worker.Job]) -> list[list[Generation]]:
        """One generate for a merged group (on the worker); one list of rows per job."""
        batch = Rows([], encoded=[], dropped=[], compiled=[], grammars=[])
        cancels: list[CallCancel] = []
        streams: list[tuple[int, TokenQueue]] = []
        for job in group:
            rows: Rows = job.payload
            if rows.stream is not None:
                streams.append((len(batch.requests), rows.stream))
            batch.requests = [*batch.requests, *rows.requests]
            batch.encoded += rows.encoded or []
            batch.dropped += rows.dropped or [0] * len(rows.requests)
            batch.compiled += rows.compiled or []
            batch.grammars += rows.grammars or [None] * len(rows.requests)
            cancels += [job.cancel] * len(rows.requests)
        try:
            for before, _ in list(self._observers):
                if before is not None:
                    before(len(batch.requests))
            gens = generate_rows(self.sm.handle, self._grammars, batch, cancels, streams)
            for _, after in list(self._observers):
                if after is not None:
                    after(gens)
        finally:
            for _, stream in streams:
                stream.end()
        out, start = [], 0
        for job in group:
            n = len(job.payload.requests)
            out.append(gens[start : start + n])
            start += n
        return out


def _in_order(jobs: Sequence[worker.Job], results: Sequence[list[Generation]]) -> list[Generation]:
    """The jobs' rows back in the order of the requests that made them."""
    out: dict[int, Generation] = {}
    for job, rows in zip(jobs, results, strict=True):
        out.update(zip(job.payload.index, rows, strict=True))
    return [out[i] for i in range(len(out))]


def _failed(exc: BaseException) -> Future:
    """A future that holds the error that refused its request."""
    future: Future = Future()
    future.set_running_or_notify_cancel()
    future.set_exception(exc)
    return future


def _single(job: worker.Job) -> Future:
    """A future for a one-row job's ``Generation``; cancelling it stops the row."""
    outer: Future = Future()

    def relay(inner: Future) -> None:
        if inner.cancelled():
            outer.cancel()
        elif inner.exception() is not None:
            if outer.set_running_or_notify_cancel():
                outer.set_exception(inner.exception())
        elif outer.set_running_or_notify_cancel():
            outer.set_result(inner.result()[0])

    def stop(f: Future) -> None:
        if f.cancelled():
            job.cancel.set()
            job.future.cancel()

    outer.add_done_callback(stop)
    job.future.add_done_callback(relay)
    return outer
