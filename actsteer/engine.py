"""The engine interface: the one thing the LangChain and LlamaIndex adapters talk to.

A ``Request`` is a prompt, its steering (resolved once, by ``Engine.resolve``) and a frozen
``GenerationOptions``. An engine generates lists of requests (requests may share batched
forwards, whatever their options; each row is still steered only by its own request), streams one
request as text pieces ending with its final ``Generation``, and does both without blocking an
event loop. ``actsteer.runtime.local.LocalEngine`` is the in-process implementation (a hooked
Hugging Face model and actsteer's generation thread); a server backend implements the same
protocol.

The path of a call, e.g. ``ChatSteer.invoke(..., steering="json:4")``:

1. the adapter (``langchain_steer`` / ``llamaindex_steer``) renders the messages and builds a
   ``Request``: ``engine.resolve`` parses the expression (once, memoised) into ``Steering``;
2. ``LocalEngine.generate`` / ``submit`` encodes each row, compiles its steering into per-layer
   tensors (``combine.compile_row``) and hands a ``worker.Job`` to the generation thread;
3. ``worker`` runs the job; jobs that arrive while it decodes join it at the next step
   (``schedule.loop.Run``, continuous batching);
4. the rows share one left-padded KV cache and one hook plan (``combine.plan``, per-row prompt
   ends) active around each forward (``hooks.activate``); each row picks its own next token;
5. ``hooks`` add each row's deltas at the steered layers and positions; a row leaves the step
   it ends, returned as a ``Generation`` (streams get tokens step by step).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .constrain.spec import Constraint
from .core.steering import SteeringLike
from .errors import OptionsError, SteeringSpecError, ToolSpecError
from .prompts import Prompt, Truncate, check_truncate
from .tools.spec import InvalidToolCall, ToolCall, ToolSpec, tool_choice, tool_specs

FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


@dataclass(frozen=True)
class Generation:
    """One completion with its accounting: text, token counts, why it ended, what steered it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    steering: str | None = None
    token_ids: tuple[int, ...] = ()
    """The generated ids as counted in ``completion_tokens`` (the ending EOS included); with a
    stop string they run to the step where it was found, past the cut text."""
    tool_calls: tuple[ToolCall, ...] = ()
    """Well-formed calls of the request's tools (``text`` is then the content around them)."""
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()
    """Calls that could not be parsed, or name no bound tool."""
    truncated_tokens: int = 0
    """Tokens of the prompt that were not sent, to fit the context window (``truncate=``)."""


class CallCancel:
    """A call's cancel flag: set by actsteer (an interrupted wait, an abandoned stream, a
    cancelled task) or by the caller's own event, which actsteer only reads, never sets."""

    def __init__(self, outer: threading.Event | CallCancel | None = None) -> None:
        self._own = threading.Event()
        self._outer = outer

    def set(self) -> None:
        self._own.set()

    def is_set(self) -> bool:
        return self._own.is_set() or (self._outer is not None and self._outer.is_set())


@runtime_checkable
class SteeringValue(Protocol):
    """One resolved steering as a ``Request`` carries it: a ``Steering`` (vectors in hand) or a
    ``RemoteSteering`` (an expression a server resolves). Engines read only this surface."""

    @property
    def is_zero(self) -> bool: ...

    def info(self) -> dict[str, Any]:
        """What it applies, for response metadata and traces."""
        ...

    def key(self) -> str:
        """Content identity: equal keys steer identically."""
        ...


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate: validated once, hashable, so requests with equal options can merge."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 is greedy (deterministic); above 0 samples."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Stop strings (multi-token allowed); the text is cut before the first one."""
    seed: int | None = None
    """Sampling seed: the same seed gives the same text, also inside a batch."""

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise OptionsError(f"max_new_tokens must be a positive int, got {n!r}")
        t = self.temperature
        if isinstance(t, bool) or not (isinstance(t, int | float) and 0.0 <= t < math.inf):
            raise OptionsError(f"temperature must be a finite number >= 0, got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not (isinstance(p, int | float) and 0.0 < p <= 1.0):
            raise OptionsError(f"top_p must be in (0, 1], got {p!r}")
        seed = self.seed
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64
        ):
            raise OptionsError(f"seed must be an int >= 0 (below 2**64) or None, got {seed!r}")
        stop = self.stop
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        if not all(isinstance(s, str) for s in stop):
            raise OptionsError(f"stop must be a string or a list of strings, got {stop!r}")
        object.__setattr__(self, "stop", tuple(s for s in stop if s))
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_p", float(p))


@dataclass(frozen=True, eq=False)
class Request:
    """One generation request: the prompt, its resolved steering and the options, and what the
    reply must look like: a ``constraint`` (JSON schema, regex, grammar) or tools it may call."""

    prompt: Prompt
    steering: tuple[SteeringValue, ...] = ()
    """Resolved by the engine that runs it (``Engine.resolve``): ``Steering`` values in process,
    ``RemoteSteering`` values for a server."""
    options: GenerationOptions = field(default_factory=GenerationOptions)
    constraint: Constraint | None = None
    """A grammar the reply follows token by token (``actsteer.constrain``)."""
    tools: tuple[ToolSpec, ...] = ()
    """Tools offered to the model through its chat template; replies are parsed into calls."""
    tool_choice: str = "auto"
    """``"auto"`` (text or calls, calls well formed), ``"none"``, ``"required"`` (only calls)
    or a tool's name (a call of that tool)."""
    parallel_tool_calls: bool | None = None
    """Whether a reply may hold several calls (None: yes under ``"auto"``, one call when forced)."""
    truncate: Truncate | None = None
    """What to do with a prompt that does not fit the context window: None refuses it
    (``ContextWindowError``), ``"left"`` keeps its last tokens, ``"drop_oldest_messages"``
    drops a chat's oldest turns (``actsteer.prompts.fit``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "truncate", check_truncate(self.truncate, self.prompt))
        tools = tool_specs(self.tools)
        object.__setattr__(self, "tools", tools)
        object.__setattr__(self, "tool_choice", tool_choice(self.tool_choice, tools))
        object.__setattr__(self, "constraint", Constraint.of(self.constraint))
        if self.constraint is not None and tools and self.tool_choice != "none":
            raise ToolSpecError(
                "a request cannot both constrain its reply and offer tools: pass "
                "tool_choice='none' with a constraint, or no constraint with tools"
            )

    def info(self) -> dict[str, Any]:
        """What steers this request, for response metadata and traces."""
        infos = [s.info() for s in self.steering]
        expression = " + ".join(i["expression"] for i in infos if i["expression"])
        return {"expression": expression or None, "terms": [t for i in infos for t in i["terms"]]}

    def key(self) -> tuple[Any, ...]:
        """Content identity: requests with equal keys generate the same output (prompt,
        steering by vector digests and settings, options)."""
        steering = tuple(s.key() for s in self.steering)
        shape = (self.constraint, self.tools, self.tool_choice, self.parallel_tool_calls)
        shape += (self.truncate,)
        return (json.dumps(self.prompt, sort_keys=True, default=str), steering, self.options, shape)


def checked(requests: Sequence[Request]) -> Sequence[Request]:
    """``requests`` if it is a list of ``Request`` values (an engine call's argument)."""
    if isinstance(requests, Request) or not isinstance(requests, Sequence):
        raise SteeringSpecError("an engine call takes a list of Request values")
    bad = [type(r).__name__ for r in requests if not isinstance(r, Request)]
    if bad:
        raise SteeringSpecError(f"an engine call takes Request values, got {bad[0]}")
    return requests


@runtime_checkable
class Engine(Protocol):
    """What an adapter needs from a backend."""

    @property
    def model_name(self) -> str:
        """The served model's name."""
        ...

    @property
    def context_window(self) -> int | None:
        """The most tokens one request may hold, prompt and reply together (None: unknown)."""
        ...

    def tokenize(self, prompt: Prompt, tools: Sequence[ToolSpec] = ()) -> list[int]:
        """The token ids the model is sent for ``prompt`` (chat template and tools included)."""
        ...

    def resolve(
        self, steering: SteeringLike, *, coeff: float | None = None, positions: str | None = None
    ) -> tuple[SteeringValue, ...]:
        """Any accepted steering form as this engine's steering values (``Steering`` in
        process; a server's engine keeps expressions, which the server resolves)."""
        ...

    def generate(
        self, requests: Sequence[Request], *, cancel: threading.Event | None = None
    ) -> list[Generation]:
        """One ``Generation`` per request; blocks until all are done."""
        ...

    def submit(self, requests: Sequence[Request]) -> list[Future]:
        """Start ``requests`` together and return one future per request (each resolves to
        its ``Generation``, or holds the error that refused that request alone, e.g. a prompt
        over the window); cancelling a future stops its row."""
        ...

    async def agenerate(self, requests: Sequence[Request]) -> list[Generation]:
        """``generate`` without blocking the event loop; cancelling the task stops the rows."""
        ...

    def stream(
        self,
        request: Request,
        *,
        timeout: float | None = 600.0,
        cancel: threading.Event | None = None,
    ) -> Iterator[str | Generation]:
        """Text pieces (joining to exactly ``generate``'s text), then the final
        ``Generation``; abandoning the iterator stops the row."""
        ...

    def astream(
        self, request: Request, *, timeout: float | None = 600.0
    ) -> AsyncIterator[str | Generation]:
        """``stream`` for asyncio."""
        ...
