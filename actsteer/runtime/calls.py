"""``GenerationCalls``: the generate calls of ``SteeredModel`` (sync, batched, streaming,
async), each a thin request builder over ``self.engine``: per-row steering resolved once,
options validated once, then the engine does the rest."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..core.steering import Steering, SteeringLike
from ..engine import Generation, GenerationOptions, Request
from ..errors import SteeringSpecError
from ..prompts import Prompt

if TYPE_CHECKING:
    from .local import LocalEngine


class GenerationCalls:
    """Generation methods for a class with an ``engine`` (``LocalEngine``) and ``resolve``."""

    engine: LocalEngine

    if TYPE_CHECKING:  # SteeredModel's

        def resolve(
            self,
            steering: SteeringLike,
            *,
            coeff: float | None = None,
            positions: str | None = None,
        ) -> tuple[Steering, ...]: ...

    def generate(
        self,
        prompt: Prompt,
        steering: SteeringLike = None,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> str:
        """The completion of one prompt (without the prompt), cut at the first stop string."""
        return self.generate_detailed(
            prompt,
            steering,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
        ).text

    def generate_detailed(
        self, prompt: Prompt, steering: SteeringLike = None, **kw: Any
    ) -> Generation:
        """Like ``generate`` but returns text with token counts, finish reason and steering."""
        return self.generate_batch_detailed([prompt], [steering], **kw)[0]

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        steering: SteeringLike | Sequence[SteeringLike] = None,
        **kw: Any,
    ) -> list[str]:
        """One batched, left-padded generate; ``steering`` is one spec for all rows or a list
        with one spec (or None) per row."""
        return [g.text for g in self.generate_batch_detailed(prompts, steering, **kw)]

    def generate_batch_detailed(
        self,
        prompts: Sequence[Prompt],
        steering: SteeringLike | Sequence[SteeringLike] = None,
        *,
        cancel: threading.Event | None = None,
        **options: Any,
    ) -> list[Generation]:
        """``generate_batch`` with token counts, finish reasons and steering per row. Options:
        ``max_new_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``
        (``actsteer.engine.GenerationOptions``)."""
        return self.engine.generate(self.requests(prompts, steering, **options), cancel=cancel)

    def requests(
        self,
        prompts: Sequence[Prompt],
        steering: SteeringLike | Sequence[SteeringLike] = None,
        **options: Any,
    ) -> list[Request]:
        """Engine requests for a batch: per-row steering resolved once, options validated."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise SteeringSpecError("generate_batch needs a list of prompts")
        opts = GenerationOptions(**options)
        if isinstance(steering, list):  # a list is per row; anything else applies to every row
            if len(steering) != len(prompts):
                raise SteeringSpecError(
                    f"got {len(steering)} steering specs for {len(prompts)} prompts"
                )
            per_row = [self.resolve(s) for s in steering]
        else:
            per_row = [self.resolve(steering)] * len(prompts)
        return [Request(p, s, opts) for p, s in zip(prompts, per_row, strict=True)]

    def stream(
        self,
        prompt: Prompt,
        steering: SteeringLike = None,
        *,
        timeout: float | None = 600.0,
        cancel: threading.Event | None = None,
        on_finish: Callable[[Generation], None] | None = None,
        **options: Any,
    ) -> Iterator[str]:
        """Yield the completion in pieces; the pieces join to exactly ``generate``'s text.
        Abandoning the iterator stops generation and leaves no steering behind. ``on_finish``
        gets the finished ``Generation`` (token counts, finish reason) after the last piece.
        ``timeout``: seconds to wait for the next token (time queued behind other generations
        counts) before failing."""
        (request,) = self.requests([prompt], steering, **options)
        items = self.engine.stream(request, timeout=timeout, cancel=cancel)
        return _pieces(items, on_finish)

    async def agenerate(self, prompt: Prompt, steering: SteeringLike = None, **kw: Any) -> str:
        """``generate`` on the generation thread, without blocking the event loop; cancelling
        the task stops the generation."""
        return (await self.agenerate_detailed(prompt, steering, **kw)).text

    async def agenerate_detailed(
        self, prompt: Prompt, steering: SteeringLike = None, **kw: Any
    ) -> Generation:
        results = await self.agenerate_batch_detailed([prompt], [steering], **kw)
        return results[0]

    async def agenerate_batch_detailed(
        self,
        prompts: Sequence[Prompt],
        steering: SteeringLike | Sequence[SteeringLike] = None,
        **options: Any,
    ) -> list[Generation]:
        """``generate_batch_detailed`` without blocking the event loop. Runs on actsteer's
        generation thread, which merges calls waiting at the same time (same options) into one
        batched generate, so ``asyncio.gather`` of many calls batches by itself; each row is
        still steered only by its own call. Cancelling the task stops its rows."""
        # resolving may read (or extract) preset vectors: keep it off the event loop
        requests = await asyncio.to_thread(self.requests, prompts, steering, **options)
        return await self.engine.agenerate(requests)

    async def astream(
        self,
        prompt: Prompt,
        steering: SteeringLike = None,
        *,
        timeout: float | None = 600.0,
        on_finish: Callable[[Generation], None] | None = None,
        **options: Any,
    ) -> AsyncIterator[str]:
        """``stream`` for asyncio: pieces arrive without blocking the event loop."""
        (request,) = await asyncio.to_thread(self.requests, [prompt], steering, **options)
        async for item in self.engine.astream(request, timeout=timeout):
            if isinstance(item, Generation):
                if on_finish is not None:
                    on_finish(item)
            else:
                yield item


def _pieces(
    items: Iterator[str | Generation], on_finish: Callable[[Generation], None] | None
) -> Iterator[str]:
    for item in items:
        if isinstance(item, Generation):
            if on_finish is not None:
                on_finish(item)
        else:
            yield item
