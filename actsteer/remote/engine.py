"""RemoteEngine: the ``Engine`` for a vLLM server running actsteer's plugin (``actsteer serve``).

Requests go over the official ``openai`` client: chat messages to ``/v1/chat/completions``,
raw strings to ``/v1/completions``, the steering as ``vllm_xargs={"actsteer": ...}``. Steering
is validated here before anything is sent (syntax, preset names) and sent as its canonical
expression; the server resolves it against its own copy of the vectors and answers a bad one
with HTTP 400. A remote request names presets or the server's vector files: in-memory vectors
cannot travel (save them into the server's ``--vectors`` folder and name them ``file:NAME``).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from .. import resolve
from ..core.expressions import Expression, parse
from ..core.steering import SteeringLike
from ..core.wire import spec_options
from ..engine import Generation, GenerationOptions, Request
from ..errors import ContextWindowError, GenerationError, SteeringSpecError, ToolSpecError
from ..prompts import Fitted, Prompt, fit
from ..tools import wire
from ..tools.formats import HERMES, ToolFormat
from ..tools.spec import ToolSpec
from .replies import Said, calls_of, generation, noted, token_ids, whole
from .steering import RemoteSteering, merged

#: Requests in flight at once from one engine (vLLM batches concurrent requests).
MAX_IN_FLIGHT = 64


class RemoteEngine:
    """Generation on an actsteer-enabled vLLM server at ``base_url`` (``.../v1``)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "EMPTY",
        timeout: float = 600.0,
        max_retries: int = 2,
        tool_format: ToolFormat = HERMES,
    ) -> None:
        import openai

        self.base_url, self._model = base_url, model
        self.tool_format = tool_format
        """How the served model writes calls (hermes: ``<tool_call>``, also actsteer's generic
        block); it must match the server's ``--tool-call-parser``."""
        self._window: int | None = None
        self._kw = {
            "base_url": base_url,
            "api_key": api_key,
            "timeout": timeout,
            "max_retries": max_retries,
        }
        self.client = openai.OpenAI(**self._kw)
        # an async client's connections belong to one event loop: one client per loop
        self._aclients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        # sync calls run on the async client in a loop of their own: cancelling a call's future
        # then cancels its HTTP request, and the server stops the row when the connection closes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None

    @property
    def model_name(self) -> str:
        return self._model

    def resolve(
        self, steering: SteeringLike, *, coeff: float | None = None, positions: str | None = None
    ) -> tuple[RemoteSteering, ...]:
        resolve.check(steering, coeff=coeff, positions=positions)
        if steering is None:
            return ()
        items = steering if isinstance(steering, list | tuple) else [steering]
        out: list[RemoteSteering] = []
        texts: list[str] = []  # a run of expressions, folded into one steering in place

        def fold() -> None:
            if texts:
                terms = tuple(t for text in texts for t in parse(text).terms)
                out.append(RemoteSteering(Expression(terms).canonical(), coeff, positions))
                texts.clear()

        for item in items:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, Mapping):
                fold()
                expression, options = spec_options(item)
                if coeff is not None:
                    options["coeff"] = options.get("coeff", 1.0) * coeff
                if positions is not None:
                    options["positions"] = positions
                spec_options({"expression": expression, **options})  # as it will go
                out.append(RemoteSteering(parse(expression).canonical(), **options))
            else:
                raise SteeringSpecError(
                    "a remote engine steers with expressions naming presets or the server's "
                    "vector files (file:NAME), or mappings of Steering fields around them, not "
                    f"a {type(item).__name__}"
                )
        fold()
        return tuple(out)

    def tokenize(self, prompt: Prompt, tools: Sequence[ToolSpec] = ()) -> list[int]:
        """The ids the server sends the model for ``prompt`` (its ``/tokenize``: chat template
        and tools included); also learns the server's context window."""
        import httpx

        body: dict[str, Any] = {"model": self._model}
        if isinstance(prompt, str):
            body.update(prompt=prompt, add_special_tokens=True)
        else:
            body["messages"] = [wire.openai_message(m) for m in prompt]
            body["tools"] = [t.openai() for t in tools] or None
        root = self.base_url.removesuffix("/").removesuffix("/v1")
        try:
            reply = httpx.post(f"{root}/tokenize", json=body, timeout=self._kw["timeout"])
            reply.raise_for_status()
        except httpx.HTTPError as exc:
            raise GenerationError(f"the server cannot count tokens: {exc}") from exc
        data = reply.json()
        self._window = data.get("max_model_len") or self._window
        return [int(t) for t in data["tokens"]]

    @property
    def context_window(self) -> int | None:
        """The server's ``max_model_len`` (asked once)."""
        if self._window is None:
            self.tokenize("x")
        return self._window

    # -- the Engine protocol ----------------------------------------------------------------
    def generate(
        self, requests: Sequence[Request], *, cancel: threading.Event | None = None
    ) -> list[Generation]:
        futures = self.submit(requests)
        try:
            if cancel is None:
                return [f.result() for f in futures]
            while not all(f.done() for f in futures):  # the caller's cancel stops every row
                if cancel.wait(0.05):
                    raise GenerationError("the call was cancelled")
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()  # a no-op for finished calls; an interrupted wait stops the rest

    def submit(self, requests: Sequence[Request]) -> list[Future]:
        """One future per request; cancelling it (a deadline, an interrupted wait) cancels
        its HTTP request, so the server stops generating that row."""
        loop = self._background()
        return [asyncio.run_coroutine_threadsafe(self._limited(r), loop) for r in requests]

    def _background(self) -> asyncio.AbstractEventLoop:
        """The event loop (on a daemon thread) that runs this engine's sync calls."""
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="actsteer-remote", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop

    async def _limited(self, request: Request) -> Generation:
        """``_acall`` with at most ``MAX_IN_FLIGHT`` of the sync calls at the server at once."""
        if self._slots is None:  # made on the background loop, its only user
            self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        async with self._slots:
            return await self._acall(request)

    async def agenerate(self, requests: Sequence[Request]) -> list[Generation]:
        return list(await asyncio.gather(*(self._acall(r) for r in requests)))

    def stream(
        self,
        request: Request,
        *,
        timeout: float | None = 600.0,
        cancel: threading.Event | None = None,
    ) -> Iterator[str | Generation]:
        fitted = self._fit(request)
        chunks = self._create(self.client, request, stream=True, timeout=timeout, fitted=fitted)
        said = Said(self.tool_format)
        try:
            for chunk in chunks:
                if piece := said.add(chunk):
                    yield piece
                if cancel is not None and cancel.is_set():
                    said.finish = "cancelled"
                    break
        finally:
            chunks.close()
        yield noted(said.generation(request), fitted)

    async def astream(
        self, request: Request, *, timeout: float | None = 600.0
    ) -> AsyncIterator[str | Generation]:
        fitted = await asyncio.to_thread(self._fit, request)
        chunks = await self._acreate(request, stream=True, timeout=timeout, fitted=fitted)
        said = Said(self.tool_format)
        try:
            async for chunk in chunks:
                if piece := said.add(chunk):
                    yield piece
        finally:
            await chunks.close()
        yield noted(said.generation(request), fitted)

    # -- HTTP -------------------------------------------------------------------------------
    async def _acall(self, request: Request) -> Generation:
        fitted = await asyncio.to_thread(self._fit, request)
        reply = await self._acreate(request, stream=False, fitted=fitted)
        return noted(self._read(request, reply), fitted)

    def _fit(self, request: Request) -> Fitted | None:
        """The prompt as ``request.truncate`` makes it fit, counted with the server's
        tokenizer (None: no truncation asked; the server itself then refuses a prompt that
        does not fit, HTTP 400, read as ``ContextWindowError``)."""
        if request.truncate is None:
            return None
        return fit(
            request.prompt,
            lambda p: self.tokenize(p, request.tools),
            request.options.max_new_tokens,
            self.context_window,
            request.truncate,
        )

    def _read(self, request: Request, reply: Any) -> Generation:
        """A whole (non-stream) reply as the request's ``Generation``."""
        ids, calls = token_ids(reply), calls_of(reply)
        return generation(request, *whole(reply), reply.usage, ids, calls, self.tool_format)

    def _create(
        self, client: Any, request: Request, *, stream: bool, timeout=None, fitted=None
    ) -> Any:
        chat, kwargs = self._kwargs(request, stream, timeout, fitted)
        api = client.chat.completions if chat else client.completions
        return _http(lambda: api.create(**kwargs))

    @property
    def aclient(self) -> Any:
        """The ``openai.AsyncOpenAI`` client of the running event loop."""
        import openai

        loop = asyncio.get_running_loop()
        if loop not in self._aclients:
            self._aclients[loop] = openai.AsyncOpenAI(**self._kw)
        return self._aclients[loop]

    async def _acreate(self, request: Request, *, stream: bool, timeout=None, fitted=None) -> Any:
        chat, kwargs = self._kwargs(request, stream, timeout, fitted)
        api = self.aclient.chat.completions if chat else self.aclient.completions
        try:
            return await api.create(**kwargs)
        except Exception as exc:
            raise _error(exc) from exc

    def _kwargs(
        self, request: Request, stream: bool, timeout: float | None, fitted: Fitted | None = None
    ) -> tuple[bool, dict[str, Any]]:
        o: GenerationOptions = request.options
        kwargs: dict[str, Any] = {
            "model": self._model,
            "max_tokens": o.max_new_tokens,
            "temperature": o.temperature,
            "top_p": o.top_p,
            "stream": stream,
        }
        if o.stop:
            kwargs["stop"] = list(o.stop)
        if o.seed is not None:
            kwargs["seed"] = o.seed
        if stream:
            kwargs["stream_options"] = {"include_usage": True}
        if timeout is not None:
            kwargs["timeout"] = timeout
        extra: dict[str, Any] = {"return_token_ids": True}
        steering = merged([s for s in request.steering if not s.is_zero])
        if steering is not None:
            extra["vllm_xargs"] = {"actsteer": steering}
        if request.constraint is not None:  # vLLM's own structured outputs
            extra["structured_outputs"] = request.constraint.wire()
        kwargs["extra_body"] = extra
        prompt = request.prompt if fitted is None else fitted.prompt
        if fitted is not None and request.truncate == "left" and fitted.dropped_tokens:
            extra.update(truncate_prompt_tokens=len(fitted.ids), truncation_side="left")
        chat = not isinstance(prompt, str)
        if chat:
            kwargs["messages"] = [wire.openai_message(m) for m in prompt]
        else:
            kwargs["prompt"] = prompt
        if request.tools:  # the server's template renders them, its tool parser reads calls
            if not chat:
                raise ToolSpecError("tools need chat messages, not a raw completion string")
            kwargs["tools"] = [t.openai() for t in request.tools]
            # a forced choice goes as the same call grammar the local engine uses (one call,
            # compact arguments), under "auto" so that vLLM's hermes parser reads the calls
            choice = request.tool_choice
            kwargs["tool_choice"] = "none" if choice == "none" else "auto"
            grammar = self.tool_format.constraint(
                request.tools, choice, request.parallel_tool_calls
            )
            if grammar is not None:
                extra["structured_outputs"] = grammar.wire()
        return chat, kwargs


def _http(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:
        raise _error(exc) from exc


def _error(exc: Exception) -> Exception:
    """A server's 400 about steering as actsteer's own error; anything else as it came."""
    import openai

    if isinstance(exc, openai.BadRequestError) and "actsteer" in str(exc):
        return SteeringSpecError(f"the server refused the steering: {exc}")
    window = ("maximum context length", "cannot be greater than max_model_len")
    if isinstance(exc, openai.BadRequestError) and any(w in str(exc) for w in window):
        return ContextWindowError(f"the request does not fit the server's context window: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return GenerationError(f"cannot reach the vLLM server: {exc}")
    return exc


_ENGINES: dict[tuple[str, str, str], RemoteEngine] = {}
_ENGINES_LOCK = threading.Lock()


def remote_engine(base_url: str, model: str, api_key: str = "EMPTY") -> RemoteEngine:
    """One ``RemoteEngine`` (one HTTP connection pool) per server, model and key, shared by
    every adapter copy that points there."""
    key = (base_url.rstrip("/"), model, api_key)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = RemoteEngine(key[0], model, api_key=api_key)
        return _ENGINES[key]
