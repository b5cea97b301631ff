"""``timeout=`` as LangChain's and LlamaIndex's hosted models mean it (``ChatOpenAI``,
``ChatOllama``, LlamaIndex ``OpenAI``): seconds a whole call may take. Past it the call's rows
are stopped at their next decode step (nothing leaks into later calls) and the call raises
``TimeoutError``. Both adapters use these helpers over any ``Engine``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ..engine import Generation
from ..errors import GenerationError, OptionsError

#: How long a stream waits for its next token when the call has no timeout.
STALL = 600.0


def checked(timeout: Any) -> float | None:
    """``timeout`` if it is None or a positive number of seconds, else ``OptionsError``."""
    if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
        raise OptionsError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return timeout


def expired(timeout: float) -> TimeoutError:
    return TimeoutError(f"the call did not finish within timeout={timeout:g} s; its rows stopped")


def results(futures: Sequence[Future], timeout: float) -> list[Generation]:
    """The futures' generations, all within ``timeout`` seconds, or every row stopped."""
    deadline = time.monotonic() + timeout
    try:
        return [f.result(max(0.0, deadline - time.monotonic())) for f in futures]
    except TimeoutError:
        raise expired(timeout) from None
    finally:
        for f in futures:
            f.cancel()  # a no-op for finished rows


async def aresults(futures: Sequence[Future], timeout: float) -> list[Generation]:
    """``results`` without blocking the event loop."""
    try:
        waits = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        return list(await asyncio.wait_for(waits, timeout))
    except TimeoutError:
        raise expired(timeout) from None
    finally:
        for f in futures:
            f.cancel()


def stream(items: Iterator[Any], timeout: float | None) -> Iterator[Any]:
    """A stream that ends in ``TimeoutError`` once ``timeout`` seconds have passed."""
    if timeout is None:
        yield from items
        return
    deadline = time.monotonic() + timeout
    try:
        for item in items:
            yield item
            if time.monotonic() > deadline and not isinstance(item, Generation):
                raise expired(timeout)
    except GenerationError:  # the engine's wait for a token ran out: the same deadline
        if time.monotonic() > deadline - 0.05:
            raise expired(timeout) from None
        raise
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # an abandoned engine stream stops its row


async def astream(items: AsyncIterator[Any], timeout: float | None) -> AsyncIterator[Any]:
    """``stream`` for async streams."""
    if timeout is None:
        async for item in items:
            yield item
        return
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(anext(items), max(left, 0.0))
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise expired(timeout) from None
            yield item
    finally:
        await items.aclose()


def streamed(engine: Any, request: Any, timeout: float | None) -> Iterator[Any]:
    """``engine.stream(request)`` under the call's deadline (no deadline: the STALL wait)."""
    return stream(engine.stream(request, timeout=timeout or STALL), timeout)


def astreamed(engine: Any, request: Any, timeout: float | None) -> AsyncIterator[Any]:
    """``engine.astream(request)`` under the call's deadline."""
    return astream(engine.astream(request, timeout=timeout or STALL), timeout)
