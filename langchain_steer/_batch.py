"""How the rows of one ``batch``/``abatch`` reach the engine together.

LangChain runs a batch as one ``invoke`` per input, each with its own config, callbacks, cache
lookup and run id, and a chat model's ``generate`` loops over its inputs one by one. So before
those invokes run, the batch builds every row's engine ``Request`` and submits them all at once
(``Engine.submit``: the generation thread merges them into batched generates of equal options).
The invokes then run as usual, in order, in this thread or task; each one's ``_generate`` takes
its already running row (matched by prompt, steering and options) instead of starting its own.
A row whose request or model cannot be built (bad per-row steering) is not submitted: its invoke
raises the error itself, and the other rows generate as usual. Rows no invoke took (a cache hit,
a streaming callback) are cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from langchain_core.runnables.configurable import (
    RunnableConfigurableAlternatives,
    RunnableConfigurableFields,
)
from langchain_core.tracers._streaming import _StreamingCallbackHandler

from actsteer.engine import Generation, Request
from actsteer.runtime import deadline as _deadline

Row = tuple[Any, Any, RunnableConfig]
"""One batch input: the actsteer model that runs it (``ChatSteer``/``SteerLLM``), the input
and its config."""

_RUNNING: contextvars.ContextVar[dict[Any, collections.deque[Future]] | None] = (
    contextvars.ContextVar("langchain_steer_running", default=None)
)


def take(request: Request) -> Future | None:
    """The running row of the current batch for this request, if there is one."""
    running = _RUNNING.get()
    if not running:
        return None
    queue = running.get(request.key())
    return queue.popleft() if queue else None


def generate(
    model: Any, requests: Sequence[Request], timeout: float | None = None
) -> list[Generation]:
    """Generations for ``requests``: rows of the current batch are taken, the rest generate
    together in one engine call; with ``timeout``, all within that many seconds."""
    found = [take(r) for r in requests]
    rest = [r for r, f in zip(requests, found, strict=True) if f is None]
    if timeout is not None:
        submitted = model.engine().submit(rest) if rest else []
        return _deadline.results(_merged(found, submitted), timeout)
    fresh = iter(model.engine().generate(rest) if rest else [])
    return [_wait(f) if f is not None else next(fresh) for f in found]


async def agenerate(
    model: Any, requests: Sequence[Request], timeout: float | None = None
) -> list[Generation]:
    """``generate`` without blocking the event loop."""
    found = [take(r) for r in requests]
    rest = [r for r, f in zip(requests, found, strict=True) if f is None]
    if timeout is not None:
        submitted = await asyncio.to_thread(model.engine().submit, rest) if rest else []
        return await _deadline.aresults(_merged(found, submitted), timeout)
    fresh = iter(await model.engine().agenerate(rest) if rest else [])
    out = []
    for f in found:
        out.append(await _await(f) if f is not None else next(fresh))
    return out


def _merged(found: Sequence[Future | None], submitted: Sequence[Future]) -> list[Future]:
    """One future per request: the batch's running row where one was found, else the next of
    the rows submitted for the rest."""
    fresh = iter(submitted)
    return [f if f is not None else next(fresh) for f in found]


def _wait(future: Future) -> Generation:
    try:
        return future.result()
    except BaseException:
        future.cancel()  # interrupted: stop the row
        raise


async def _await(future: Future) -> Generation:
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.cancel()
        raise


def _streams(model: Any, config: RunnableConfig, kwargs: dict[str, Any]) -> bool:
    """Whether the row's invoke will stream, by LangChain's rule for chat models: ``stream=``,
    ``streaming=True``, or a streaming callback handler in its config (``astream_events`` and
    LangGraph's "messages" mode attach one)."""
    if getattr(model, "streaming", False) or kwargs.get("stream"):
        return True
    if not isinstance(model, BaseChatModel) or model.disable_streaming is True:
        return False
    callbacks = config.get("callbacks")
    handlers = getattr(callbacks, "handlers", callbacks) or []
    return any(isinstance(h, _StreamingCallbackHandler) for h in handlers)


def _requests(rows: Sequence[Row], kwargs: dict[str, Any]) -> list[Request | None]:
    """Each row's request as its invoke will build it; None where it cannot be built here, or
    where the invoke will stream (it starts its own generate: a row submitted for it would run
    unused)."""
    out: list[Request | None] = []
    for model, value, config in rows:
        if _streams(model, config, kwargs):
            out.append(None)
            continue
        try:
            out.append(model._batch_request(value, dict(kwargs)))
        except Exception:  # the row's own invoke raises it, with its callbacks
            out.append(None)
    return out


@contextlib.contextmanager
def _submitted(rows: Sequence[Row], requests: Sequence[Request | None]) -> Iterator[None]:
    """Submit the rows' requests (grouped by engine) and make them takeable inside the block;
    rows nobody took are cancelled on the way out."""
    by_engine: dict[int, tuple[Any, list[Request]]] = {}
    for (model, _, _), request in zip(rows, requests, strict=True):
        if request is not None:
            engine = model.engine()
            by_engine.setdefault(id(engine), (engine, []))[1].append(request)
    running: dict[Any, collections.deque[Future]] = {}
    futures: list[Future] = []
    for engine, batch in by_engine.values():
        for request, future in zip(batch, engine.submit(batch), strict=True):
            running.setdefault(request.key(), collections.deque()).append(future)
            futures.append(future)
    token = _RUNNING.set(running)
    try:
        yield
    finally:
        _RUNNING.reset(token)
        for future in futures:
            future.cancel()  # a no-op for rows that were taken and finished


def run(
    rows: Sequence[Row], kwargs: dict[str, Any], *, chunk_size: int, return_exceptions: bool
) -> list[Any]:
    """Invoke every row, in order, with each chunk's rows generating together."""
    out: list[Any] = []
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        requests = _requests(chunk, kwargs) if len(chunk) > 1 else [None]
        with _submitted(chunk, requests):
            if len(chunk) > 1 and any(_streams(m, c, kwargs) for m, _, c in chunk):
                out.extend(_concurrently(chunk, kwargs, return_exceptions))
                continue
            for model, value, config in chunk:
                try:
                    out.append(model.invoke(value, config, **kwargs))
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    out.append(exc)
    return out


def _concurrently(chunk: Sequence[Row], kwargs: dict[str, Any], return_exceptions: bool) -> list:
    """The chunk's invokes in threads at once: streaming rows each start their own generate,
    and started together those merge (in order, one after another, each ran alone)."""

    def invoke(row: Row) -> Any:
        model, value, config = row
        try:
            return model.invoke(value, config, **kwargs)
        except Exception as exc:
            if not return_exceptions:
                raise
            return exc

    with ThreadPoolExecutor(len(chunk)) as pool:  # each thread sees the submitted rows
        futures = [pool.submit(contextvars.copy_context().run, invoke, row) for row in chunk]
        return [f.result() for f in futures]


async def arun(
    rows: Sequence[Row], kwargs: dict[str, Any], *, chunk_size: int, return_exceptions: bool
) -> list[Any]:
    """``run`` for ``abatch``: each chunk's invokes run as concurrent tasks."""
    out: list[Any] = []
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        # building requests may load a model or a preset vector: keep it off the event loop
        requests = await asyncio.to_thread(_requests, chunk, kwargs)
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda m=m, v=v, c=c: m.ainvoke(v, c, **kwargs) for m, v, c in chunk
        ]
        with _submitted(chunk, requests):
            out.extend(
                await asyncio.gather(*(c() for c in calls), return_exceptions=return_exceptions)
            )
    return out


def rows_of(model: Any, inputs: list[Any], config: Any) -> tuple[list[Row], int]:
    """A batch's rows for one model, and its chunk size (``max_concurrency``, else the
    model's ``batch_size``)."""
    configs = get_config_list(config, len(inputs))
    size = configs[0].get("max_concurrency") or model.batch_size
    return [(model, x, c) for x, c in zip(inputs, configs, strict=True)], size


# -- configurable wrappers that keep per-row configs batched -------------------------------------
def _prepared(dyn: Any, inputs: list[Any], config: Any) -> tuple[list[Row], int] | None:
    """Per-config prepared models and the chunk size when all are actsteer adapters, else None.
    A row whose model cannot be built (bad per-row steering or options) fails alone: its invoke
    raises that error, as in LangChain's own per-row batch."""
    configs = get_config_list(config, len(inputs))
    prepared: list[tuple[Any, Any]] = []
    for c in configs:
        try:
            prepared.append(dyn.prepare(c))
        except Exception as exc:
            prepared.append((_Failed(exc), c))
    ok = [r for r, _ in prepared if not isinstance(r, _Failed)]
    if not inputs or not all(hasattr(r, "_batch_request") for r in ok):
        return None
    size = configs[0].get("max_concurrency") or min((r.batch_size for r in ok), default=1)
    return [(r, x, c) for (r, c), x in zip(prepared, inputs, strict=True)], size


class _Failed:
    """A batch row whose model could not be built: every way of running it raises the error."""

    streaming = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    def _batch_request(self, *args: Any, **kwargs: Any) -> Request | None:
        raise self.error

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


class _RowBatching:
    """For LangChain's configurable wrappers: when every row resolves to an actsteer model,
    ``batch``/``abatch`` generate each chunk's rows together, whatever their configuration."""

    def batch(self, inputs, config=None, *, return_exceptions=False, **kwargs):  # type: ignore[override]
        """Batch with per-row configuration, each chunk's rows generating together."""
        found = _prepared(self, inputs, config)
        if found is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        rows, size = found
        return run(rows, kwargs, chunk_size=size, return_exceptions=return_exceptions)

    async def abatch(self, inputs, config=None, *, return_exceptions=False, **kwargs):  # type: ignore[override]
        """Async ``batch``, each chunk's rows generating together off the event loop."""
        found = _prepared(self, inputs, config)
        if found is None:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        rows, size = found
        return await arun(rows, kwargs, chunk_size=size, return_exceptions=return_exceptions)


class BatchedConfigurableFields(_RowBatching, RunnableConfigurableFields):
    """``configurable_fields`` whose batch keeps differently configured rows in one generate."""

    def _prepare(self, config: Any = None) -> tuple[Any, Any]:
        """LangChain rebuilds the model from the default's fields, its loaded runtime among
        them: a configured ``model`` (or ``model_kwargs``, ``base_url``) gets its own."""
        runnable, config = super()._prepare(config)
        default = self.default
        which = ("model", "model_kwargs", "base_url")
        runtime = getattr(runnable, "runtime", None)
        if (
            runnable is not default
            and runtime is not None
            and runtime is getattr(default, "runtime", None)
            and any(getattr(runnable, k, None) != getattr(default, k, None) for k in which)
        ):
            runnable = runnable._copy_with(runtime=None)
        return runnable, config


class BatchedConfigurableAlternatives(_RowBatching, RunnableConfigurableAlternatives):
    """``configurable_alternatives`` whose batch keeps rows of all alternatives in one generate."""
