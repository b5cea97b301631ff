"""How the calls of one ``batch``/``abatch`` become one batched, per-row-steered generate.

LangChain runs a batch as one ``invoke`` per input (each with its own config, callbacks, cache
lookup and run id). The batch installs a collector; each call hands its generation request
(``Row``) to it instead of generating, and the collector generates all rows of the chunk in one
padded generate (grouped by runtime and options), each row steered only by its own call's
settings (the engine keeps rows independent).

Invariant: every call of a chunk either hands in exactly one row or leaves (it failed, hit the
cache, or streamed); the generate starts once every call has done one or the other.

Without the collector the rows would still batch partly (actsteer's generation thread merges
calls that wait together), but the first row to arrive would start generating alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from langchain_core.runnables.configurable import (
    RunnableConfigurableAlternatives,
    RunnableConfigurableFields,
)

from actsteer.generation import Generation

from ._common import Row, SteerFields


def generate_one(row: Row) -> Generation:
    """Generate one row: through the active batch collector if this call belongs to one."""
    slot = _claim(_SyncCollector)
    if slot is not None:
        return slot.submit(row)
    return row.sm.generate_batch_detailed([row.prompt], [row.steering], **row.generate_kwargs())[0]


async def agenerate_one(row: Row) -> Generation:
    """``generate_one`` without blocking the event loop."""
    slot = _claim(_AsyncCollector)
    if slot is not None:
        return await slot.submit(row)
    results = await row.sm.agenerate_batch_detailed(
        [row.prompt], [row.steering], **row.generate_kwargs()
    )
    return results[0]


_SLOT: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar(
    "langchain_steer_slot", default=None
)


class _Slot:
    """One call's right to hand one row to its batch's collector."""

    def __init__(self, collector: _SyncCollector | _AsyncCollector) -> None:
        self.collector = collector
        self.used = False


def _claim(kind: type) -> Any:
    slot = _SLOT.get()
    if slot is None or slot.used or not isinstance(slot.collector, kind):
        return None
    slot.used = True
    return slot.collector


def _groups(rows: list[tuple[Row, Any]]) -> list[list[tuple[Row, Any]]]:
    out: dict[tuple[Any, ...], list[tuple[Row, Any]]] = {}
    for item in rows:
        out.setdefault(item[0].group, []).append(item)
    return list(out.values())


class _SyncCollector:
    """Rows handed in by the threads of one batch chunk, generated as one call by the thread
    that runs ``generate_all`` (the one that called ``batch``) once every call handed in or
    left."""

    def __init__(self, size: int) -> None:
        self._cond = threading.Condition()
        self._open = size
        self._rows: list[tuple[Row, Future]] = []
        self._error: BaseException | None = None

    def submit(self, row: Row) -> Generation:
        """Hand in this call's row and wait for its generation."""
        future: Future = Future()
        with self._cond:
            if self._error is not None:  # the batch already failed (e.g. KeyboardInterrupt)
                raise self._error
            self._rows.append((row, future))
            self._cond.notify()
        return future.result()

    def leave(self) -> None:
        """This call will hand in no row."""
        with self._cond:
            self._open -= 1
            self._cond.notify()

    def generate_all(self) -> None:
        """Wait for every call's row (or its leaving), then generate all rows as one call."""
        try:
            with self._cond:
                self._cond.wait_for(lambda: len(self._rows) >= self._open)
            for group in _groups(self._rows):
                rows = [r for r, _ in group]
                try:
                    results = rows[0].sm.generate_batch_detailed(
                        [r.prompt for r in rows],
                        [r.steering for r in rows],
                        **rows[0].generate_kwargs(),
                    )
                except Exception as exc:  # each row's caller re-raises it
                    for _, future in group:
                        future.set_exception(exc)
                    continue
                for (_, future), g in zip(group, results):
                    future.set_result(g)
        except BaseException as exc:  # interrupted: release every waiting and later call
            with self._cond:
                self._error = exc
                for _, future in self._rows:
                    if not future.done():
                        future.set_exception(exc)
            raise


class _AsyncCollector:
    """``_SyncCollector`` for the tasks of one ``abatch`` chunk (one event loop, no locks); the
    generate runs off the loop, started by the task that completes the set."""

    def __init__(self, size: int) -> None:
        self._open = size
        self._rows: list[tuple[Row, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._waiting = 0

    async def submit(self, row: Row) -> Generation:
        future = asyncio.get_running_loop().create_future()
        self._rows.append((row, future))
        self._maybe_start()
        self._waiting += 1
        try:
            return await future
        except asyncio.CancelledError:
            self._waiting -= 1
            if self._waiting == 0 and self._task is not None:
                self._task.cancel()  # nobody waits any more: stop the generation
            raise

    async def leave(self) -> None:
        self._open -= 1
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self._task is None and self._rows and len(self._rows) >= self._open:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        for group in _groups(self._rows):
            rows = [r for r, _ in group]
            try:
                results = await rows[0].sm.agenerate_batch_detailed(
                    [r.prompt for r in rows],
                    [r.steering for r in rows],
                    **rows[0].generate_kwargs(),
                )
            except BaseException as exc:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), g in zip(group, results):
                if not future.done():
                    future.set_result(g)


def run_batched(
    calls: Sequence[Callable[[], Any]], *, chunk_size: int, return_exceptions: bool
) -> list[Any]:
    """Run ``calls`` (each one model invoke) so that every chunk of them generates as one
    batch: each call runs in a thread up to handing in its row, this thread submits them."""

    def run(call: Callable[[], Any], collector: _SyncCollector | None) -> Any:
        slot = _Slot(collector) if collector is not None else None
        token = _SLOT.set(slot)
        try:
            return call()
        except Exception as exc:
            if return_exceptions:
                return exc
            raise
        finally:
            _SLOT.reset(token)
            if slot is not None and not slot.used:
                collector.leave()

    out: list[Any] = []
    for start in range(0, len(calls), chunk_size):
        chunk = calls[start : start + chunk_size]
        if len(chunk) == 1:  # nothing to batch with: generate in this thread directly
            out.append(run(chunk[0], None))
            continue
        collector = _SyncCollector(len(chunk))
        with ThreadPoolExecutor(max_workers=len(chunk)) as pool:
            futures = [
                pool.submit(contextvars.copy_context().run, run, c, collector) for c in chunk
            ]
            collector.generate_all()
            out.extend(f.result() for f in futures)
    return out


async def arun_batched(
    calls: Sequence[Callable[[], Awaitable[Any]]], *, chunk_size: int, return_exceptions: bool
) -> list[Any]:
    """``run_batched`` for coroutines: the tasks of a chunk share one batched generate."""
    out: list[Any] = []
    for start in range(0, len(calls), chunk_size):
        chunk = calls[start : start + chunk_size]
        collector = _AsyncCollector(len(chunk))

        async def run(call: Callable[[], Awaitable[Any]], collector=collector) -> Any:
            slot = _Slot(collector)
            token = _SLOT.set(slot)
            try:
                return await call()
            finally:
                _SLOT.reset(token)
                if not slot.used:
                    await collector.leave()

        out.extend(
            await asyncio.gather(*(run(c) for c in chunk), return_exceptions=return_exceptions)
        )
    return out


# -- configurable wrappers that keep per-row configs batched -------------------------------------
def _prepared(dyn: Any, inputs: list[Any], config: Any) -> Any:
    """Per-config prepared models and the chunk size when all are actsteer adapters, else None."""
    from langchain_core.runnables.config import get_config_list

    configs = get_config_list(config, len(inputs))
    prepared = [dyn.prepare(c) for c in configs]
    if not inputs or not all(isinstance(r, SteerFields) for r, _ in prepared):
        return None
    size = configs[0].get("max_concurrency") or min(r.batch_size for r, _ in prepared)
    return prepared, size


class _RowBatching:
    """For LangChain's configurable wrappers: when every row resolves to an actsteer model,
    ``batch``/``abatch`` run one generate per chunk instead of one generate per row."""

    def batch(self, inputs, config=None, *, return_exceptions=False, **kwargs):  # type: ignore[override]
        """Batch with per-row configuration, as one generate per chunk."""
        found = _prepared(self, inputs, config)
        if found is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        prepared, size = found
        calls = [partial(r.invoke, x, c, **kwargs) for (r, c), x in zip(prepared, inputs)]
        return run_batched(calls, chunk_size=size, return_exceptions=return_exceptions)

    async def abatch(self, inputs, config=None, *, return_exceptions=False, **kwargs):  # type: ignore[override]
        """Async ``batch``, one generate per chunk off the event loop."""
        found = _prepared(self, inputs, config)
        if found is None:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        prepared, size = found
        calls = [partial(r.ainvoke, x, c, **kwargs) for (r, c), x in zip(prepared, inputs)]
        return await arun_batched(calls, chunk_size=size, return_exceptions=return_exceptions)


class BatchedConfigurableFields(_RowBatching, RunnableConfigurableFields):
    """``configurable_fields`` whose batch keeps differently configured rows in one generate."""


class BatchedConfigurableAlternatives(_RowBatching, RunnableConfigurableAlternatives):
    """``configurable_alternatives`` whose batch keeps rows of all alternatives in one generate."""
