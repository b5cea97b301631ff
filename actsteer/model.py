"""SteeredModel: a Hugging Face causal LM and tokenizer with actsteer's hooks, and the calls that
generate with per-call, per-row steering (sync, batched, streaming, async)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteriaList,
)

from . import hooks, worker
from .errors import GenerationError, LayerError, SteeringSpecError
from .generation import (
    CallCancel,
    Generation,
    RowStops,
    RowStreamer,
    SeededSampler,
    TokenQueue,
    cut_at_stop,
    safe_length,
)
from .layers import find_layers
from .spec import Steering, SteeringLike, Term, _sum_aligned
from .vector import ModelFingerprint, SteeringVector

Prompt = str | Sequence[Mapping[str, str]] | Sequence[tuple[str, str]]
"""A raw completion string, or chat messages (``{"role", "content"}`` dicts or pairs)."""

#: Neutral text used to measure each layer's typical activation norm.
_NORM_TEXTS = (
    "The weather report for tomorrow mentions light rain in the afternoon.",
    "Please list three common uses for a spreadsheet in a small office.",
    "A train leaves the station at nine and arrives two hours later.",
    "Water boils at a lower temperature at high altitude than at sea level.",
)


#: How often a stream consumer checks for cancellation and timeouts while no token arrives.
_POLL_S = 0.05

_SHARED: dict[tuple[str | None, str], SteeredModel] = {}
_SHARED_LOCK = threading.Lock()


class SteeredModel:
    """A causal LM whose every generate call can carry its own steering.

    Hooks are installed once; steering is passed per call (``generate(..., steering=...)``) and
    never stored on the model, so one instance serves concurrent threads and tasks safely.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        layers_path: str | None = None,
        name: str | None = None,
        revision: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stack, layer_list, self.layers_path = find_layers(model, layers_path)
        self.layers: tuple[torch.nn.Module, ...] = tuple(layer_list)
        config = (
            model.config.get_text_config()
            if hasattr(model.config, "get_text_config")
            else model.config
        )
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        template = getattr(tokenizer, "chat_template", None)
        self.fingerprint = ModelFingerprint(
            name=name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
            architecture=(getattr(model.config, "architectures", None) or [type(model).__name__])[
                0
            ],
            hidden_size=int(hidden),
            num_layers=len(self.layers),
            revision=revision,
            chat_template_hash=(
                hashlib.sha256(template.encode()).hexdigest()[:16]
                if isinstance(template, str)
                else None
            ),
        )
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id: int = int(pad)
        self._eos_ids = self._collect_eos_ids()
        self._layer_devices, self._layer_dtypes = {}, {}
        for i, layer in enumerate(self.layers):
            p = next(layer.parameters(), None)
            self._layer_devices[i] = p.device if p is not None else torch.device("cpu")
            self._layer_dtypes[i] = p.dtype if p is not None else torch.float32
        self._norms: dict[int, float] | None = None
        self._handles = hooks.install(self.stack, self.layers)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        *,
        dtype: torch.dtype | str | None = None,
        device_map: str | Mapping[str, Any] | None = None,
        revision: str | None = None,
        layers_path: str | None = None,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> SteeredModel:
        """Load any Hugging Face causal LM by hub id or local path (kwargs go to transformers)."""
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        if device_map is not None:
            model_kwargs["device_map"] = device_map
        tokenizer = AutoTokenizer.from_pretrained(
            model_id, revision=revision, **(tokenizer_kwargs or {})
        )
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, **model_kwargs)
        return cls(model, tokenizer, layers_path=layers_path, name=model_id, revision=revision)

    @classmethod
    def shared(cls, model_id: str | None = None, **kwargs: Any) -> SteeredModel:
        """One loaded model per process for each ``(model_id, kwargs)``: adapters built with
        the same id share weights instead of loading them twice. ``None`` is the default model."""
        key = (model_id, repr(sorted(kwargs.items(), key=lambda kv: kv[0])))
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = (
                    cls.default() if model_id is None else cls.from_pretrained(model_id, **kwargs)
                )
            return _SHARED[key]

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Any, **kwargs: Any) -> SteeredModel:
        """Wrap an already loaded model and tokenizer (installs hooks on it)."""
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def default(cls, *, progress: bool = True) -> SteeredModel:
        """The embedded SmolLM2-135M-Instruct (converted and cached on first use)."""
        from .default_model import DEFAULT_MODEL_NAME, ensure_converted

        folder = ensure_converted(progress=progress)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return cls(model, tokenizer, name=DEFAULT_MODEL_NAME)

    def close(self) -> None:
        """Remove the hooks, leaving the wrapped model exactly as it was before wrapping."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.fingerprint.hidden_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The ids that end a reply (from the generation config and the tokenizer)."""
        return tuple(self._eos_ids)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def __repr__(self) -> str:
        fp = self.fingerprint
        return f"SteeredModel({fp.name!r}, layers={fp.num_layers}, hidden={fp.hidden_size})"

    # -- prompts --------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        """The exact text sent to the model: a raw string as is, messages through the chat
        template (with the generation prompt appended)."""
        if isinstance(prompt, str):
            return prompt
        messages = [_message(m) for m in prompt]
        if not messages:
            raise SteeringSpecError("an empty message list cannot be sent to the model")
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + "assistant:"

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt, exactly as a generate call sends them."""
        text = self.render(prompt)
        ids = self.tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]
        if not ids:
            raise SteeringSpecError("the prompt encodes to zero tokens")
        return list(ids)

    # -- steering -------------------------------------------------------------------------------
    def resolve(
        self,
        steering: SteeringLike,
        *,
        coeff: float | None = None,
        positions: str | None = None,
    ) -> tuple[Steering, ...]:
        """Normalise any accepted steering form (vector, ``Steering``, expression string, or a
        list of them) to a tuple of ``Steering`` values; ``coeff`` multiplies every coefficient
        and ``positions`` overrides where they apply (the adapters' ``steering_coeff`` and
        ``steering_positions``)."""
        steerings = self._resolve(steering)
        if coeff is not None or positions is not None:
            steerings = tuple(
                s.with_options(
                    coeff=s.coeff * (1.0 if coeff is None else coeff),
                    positions=positions or s.positions,
                )
                for s in steerings
            )
        return steerings

    def _resolve(self, steering: SteeringLike) -> tuple[Steering, ...]:
        if steering is None:
            return ()
        if isinstance(steering, Steering):
            return (steering,)
        if isinstance(steering, SteeringVector):
            where = _trained_positions(steering)
            card = steering.meta.extra.get("steering_card")
            if isinstance(card, Mapping) and "coeff" in card:  # a calibrated vector
                return (
                    Steering(
                        steering, float(card["coeff"]), layers=card.get("layers"), positions=where
                    ),
                )
            return (Steering(steering, positions=where),)
        if isinstance(steering, str):
            return self._parse_expression(steering)
        if isinstance(steering, Sequence):
            return tuple(s for item in steering for s in self._resolve(item))
        raise SteeringSpecError(
            f"cannot steer with a {type(steering).__name__}; pass a SteeringVector, a Steering, "
            "a list of them, or None"
        )

    def _parse_expression(self, text: str) -> tuple[Steering, ...]:
        """Resolve ``"json:4 + no-disclaimer"``-style expressions: presets (cached per model)
        and ``file:`` vectors, grouped by the positions their presets ask for."""
        from . import presets
        from .expressions import parse

        expression = parse(text)
        groups: dict[str, list[Term]] = {}
        for t in expression.terms:
            label = dataclasses.replace(t, coeff=1.0).canonical()
            if t.is_file:
                vec = _load_vector_file(t.path or "", self.fingerprint)
                card = vec.meta.extra.get("steering_card")
                if isinstance(card, Mapping) and "coeff" in card:
                    # a calibrated file, like a preset: coefficient 1 is its calibrated setting
                    vec = vec.select(t.layers or card.get("layers") or vec.layers) * float(
                        card["coeff"]
                    )
                elif t.layers:
                    vec = vec.select(t.layers)
                positions = _trained_positions(vec)
            else:
                vec = presets.ready_vector(self, t.source, layers=t.layers)
                positions = presets.get(t.source).positions
            groups.setdefault(positions, []).append(Term(vec, t.coeff, name=label))
        return tuple(Steering(terms, positions=pos) for pos, terms in groups.items())

    def preset(self, name: str, *, layers: Sequence[int] | None = None) -> SteeringVector:
        """A built-in behaviour's vector for this model (extracted once, then cached on disk),
        on its default layers and scaled so that coefficient 1 is its default strength."""
        from . import presets

        return presets.ready_vector(self, name, layers=layers)

    def activation_norms(self) -> dict[int, float]:
        """Each layer's typical hidden-state norm on neutral text (computed once, then cached)."""
        if self._norms is not None:
            return dict(self._norms)
        if not worker.here():  # computed on the worker, one thread: no lock needed
            return worker.call(self.activation_norms)
        if self._norms is None:
            states = self.hidden_states(list(_NORM_TEXTS), range(self.num_layers))
            norms = {}
            for layer, rows in states.items():
                # skip each row's first token: attention sinks carry outsized norms
                per_token = torch.cat([r[1:].norm(dim=-1) for r in rows])
                norms[layer] = float(per_token.mean())
            self._norms = norms
        return dict(self._norms)

    def row_spec(self, steering: SteeringLike) -> tuple[hooks.RowSpec, str | None]:
        """Compile one row's steering into per-layer tensors for this model."""
        steerings = [s for s in self.resolve(steering) if not s.is_zero]
        if not steerings:
            return {}, None
        norms = self.activation_norms()
        row: dict[tuple[str, str], tuple[dict[int, torch.Tensor], float]] = {}
        for s in steerings:
            deltas = s.layer_deltas(self.fingerprint, norms)
            key = (s.positions, s.operator)
            strength = s.coeff if s.operator == "ablate" else 1.0
            if key not in row:
                row[key] = (dict(deltas), strength)
                continue
            merged, old = row[key]
            if s.operator == "ablate" and old != strength:
                raise SteeringSpecError("ablations of different strengths cannot share a call")
            for layer, d in deltas.items():
                if layer not in merged:
                    merged[layer] = d
                elif s.operator == "ablate":
                    merged[layer] = torch.cat([merged[layer], d])
                else:
                    merged[layer] = _sum_aligned(merged[layer], d)
        return row, " + ".join(s.describe() for s in steerings)

    def plan(
        self,
        steerings: Sequence[SteeringLike],
        *,
        prompt_len: int | None = None,
        starts: torch.Tensor | None = None,
    ) -> hooks.Plan | None:
        """The hook plan for a batch whose row ``i`` carries ``steerings[i]``."""
        return self._build_plan([self.row_spec(s) for s in steerings], prompt_len, starts)

    @contextlib.contextmanager
    def steer(self, steering: SteeringLike) -> Iterator[hooks.Plan | None]:
        """Steer raw ``model(...)`` / ``model.generate(...)`` calls made inside the block, in
        this thread or task only. The first forward's length counts as the prompt."""
        plan = self.plan([steering])
        with hooks.activate(hooks.CallState(plan) if plan is not None else None):
            yield plan

    def explain(self, steering: SteeringLike) -> str:
        """Print-ready description of what a steering does on this model, layer by layer."""
        norms = self.activation_norms()
        parts = [s.explain(self.fingerprint, norms) for s in self.resolve(steering)]
        return "\n".join(parts) if parts else "no steering"

    # -- reading activations --------------------------------------------------------------------
    def hidden_states(
        self,
        prompts: Sequence[Prompt],
        layers: Sequence[int] | range,
        *,
        steering: SteeringLike = None,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> dict[int, list[torch.Tensor]]:
        """Outputs of ``layers`` (after any steering) for each prompt, without padding:
        ``{layer: [(tokens, hidden), ...]}``. Runs batched; stops after the deepest layer."""
        return self.hidden_states_of_ids(
            [self.encode(p) for p in prompts],
            layers,
            steering=steering,
            batch_size=batch_size,
            progress=progress,
        )

    @worker.on_worker
    def hidden_states_of_ids(
        self,
        encoded: Sequence[Sequence[int]],
        layers: Sequence[int] | range,
        *,
        steering: SteeringLike = None,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> dict[int, list[torch.Tensor]]:
        """``hidden_states`` for token-id sequences; a progress bar shows on long reads."""
        from tqdm.auto import tqdm

        layers = sorted(set(layers))
        bad = [x for x in layers if not 0 <= x < self.num_layers]
        if bad or not layers:
            raise LayerError(f"layers {bad or '[]'} out of range 0-{self.num_layers - 1}")
        if batch_size < 1:
            raise SteeringSpecError(f"batch_size must be >= 1, got {batch_size}")
        compiled = self.row_spec(steering) if steering is not None else ({}, None)
        out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        starts = range(0, len(encoded), batch_size)
        show = progress if progress is not None else len(starts) > 4
        for start in tqdm(starts, desc="actsteer: reading activations", disable=not show):
            chunk = encoded[start : start + batch_size]
            ids, mask = self._pad(chunk)
            plan = self._plan_from([compiled] * len(chunk), ids.shape[1], mask)
            state = hooks.CallState(plan, capture_layers=frozenset(layers), stop_after=layers[-1])
            with torch.inference_mode(), hooks.activate(state):
                try:
                    self.model(input_ids=ids, attention_mask=mask, use_cache=False)
                except hooks.StopForward:
                    pass
            for layer in layers:
                h = state.captured[layer].float().cpu()
                for row, tokens in enumerate(chunk):
                    out[layer].append(h[row, h.shape[1] - len(tokens) :].clone())
        return out

    @worker.on_worker
    def continuation_logprobs(
        self,
        prompt: Prompt,
        continuation: str | Sequence[int],
        steering: SteeringLike = None,
    ) -> torch.Tensor:
        """Teacher-forced log-probabilities ``(tokens, vocab)`` that the model, steered as in a
        generate call of ``prompt``, assigns at each position of ``continuation``. The
        continuation counts as generated tokens, so ``positions="generated"`` applies to it."""
        prompt_ids = self.encode(prompt)
        cont = (
            self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if isinstance(continuation, str)
            else list(continuation)
        )
        if not cont:
            raise SteeringSpecError("the continuation is empty")
        ids, mask = self._pad([prompt_ids + cont])
        plan = self._plan_from([self.row_spec(steering)], len(prompt_ids), mask)
        with torch.inference_mode(), hooks.activate(hooks.CallState(plan) if plan else None):
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        span = logits[0, len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(cont)].float()
        return torch.log_softmax(span, dim=-1).cpu()

    # -- generation -----------------------------------------------------------------------------
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
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Generation]:
        """``generate_batch`` with token counts, finish reasons and steering per row."""
        per_row, options = _batch_options(
            prompts, steering, max_new_tokens, temperature, top_p, stop, seed
        )
        if not prompts:
            return []
        encoded, compiled = self._prepare_rows(prompts, per_row)
        flag = CallCancel(cancel)  # the caller's event is read, never set
        if worker.here():
            return self._generate_rows(encoded, compiled, [flag] * len(encoded), *options)
        job = worker.Job(self, list(prompts), per_row, options, (encoded, compiled), cancel=flag)
        return worker.wait(job)

    def _prepare_rows(self, prompts: Sequence[Prompt], per_row: Sequence[SteeringLike]):
        """Token ids and compiled steering per row: where a bad prompt or spec fails."""
        return [self.encode(p) for p in prompts], [self.row_spec(s) for s in per_row]

    def _generate_rows(
        self,
        encoded,
        compiled,
        cancels,
        max_new_tokens,
        temperature,
        top_p,
        stop,
        seed,
        streams=(),
    ) -> list[Generation]:
        """One left-padded generate of prepared rows; ``cancels`` holds each row's flag and
        ``streams`` the ``(row, TokenQueue)`` of streaming rows. Each row's result ends where
        the row ended, however long the batch went on."""
        ids, mask = self._pad(encoded)
        plan = self._plan_from(compiled, ids.shape[1], mask)
        stops = RowStops(cancels, self._eos_ids, stop, self.tokenizer)
        streamer = RowStreamer(streams, stops) if streams else None
        out = self._generate_ids(
            ids, mask, plan, max_new_tokens, temperature, top_p, seed, stops, streamer
        )
        width = out.shape[1]
        return [
            self._finish(
                tokens,
                out[row, ids.shape[1] : stops.stopped_at.get(row, width)].tolist(),
                stop,
                max_new_tokens,
                cancels[row],
                compiled[row][1],
            )
            for row, tokens in enumerate(encoded)
        ]

    def stream(
        self,
        prompt: Prompt,
        steering: SteeringLike = None,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        timeout: float | None = 600.0,
        cancel: threading.Event | None = None,
        on_finish: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]:
        """Yield the completion in pieces; the pieces join to exactly ``generate``'s text.
        Abandoning the iterator stops generation and leaves no steering behind. ``on_finish``
        gets the finished ``Generation`` (token counts, finish reason) after the last piece.
        ``timeout``: seconds to wait for the next token (time queued behind other generations
        counts) before failing."""
        if worker.here():
            raise GenerationError("stream() cannot be called from actsteer's generation thread")
        stop = _check_options(max_new_tokens, temperature, top_p, stop)
        per_row = [steering]
        encoded, compiled = self._prepare_rows([prompt], per_row)
        job = worker.Job(
            self,
            [prompt],
            per_row,
            (max_new_tokens, temperature, top_p, stop, seed),
            (encoded, compiled),
            stream=TokenQueue(),
            cancel=CallCancel(cancel),
        )
        return self._stream(job, timeout, on_finish)

    def _stream(
        self,
        job: worker.Job,
        timeout: float | None,
        on_finish: Callable[[Generation], None] | None,
    ) -> Iterator[str]:
        max_new_tokens, _, _, stop, _ = job.options
        tokens, steering = job.rows[0][0], job.rows[1][0][1]  # type: ignore[index]
        tokens_in = job.stream
        assert tokens_in is not None
        future = worker.submit(job)
        new: list[int] = []
        sent = 0
        hit = False
        deadline: float | None = None
        try:
            while True:
                try:
                    item = tokens_in.queue.get(timeout=_POLL_S)
                except queue.Empty:
                    if job.cancel.is_set() and (future.cancelled() or future.cancel()):
                        break  # cancelled while still queued: it never starts
                    if timeout is not None and (future.running() or future.done()):
                        now = time.monotonic()  # queued time does not count
                        deadline = deadline or now + timeout
                        if now > deadline:
                            raise GenerationError(f"no token arrived within {timeout} s") from None
                    continue
                deadline = None
                if item is TokenQueue.END:
                    break
                new.extend(item)
                text = self._decode(new)
                text, hit = cut_at_stop(text, stop)
                upto = len(text) if hit else safe_length(text, stop)
                if upto > sent:
                    yield text[sent:upto]
                    sent = upto
                if hit:
                    break
            if not (hit or tokens_in.row_done or future.cancelled()):
                future.result()  # the generate ended before this row did: re-raise a failure
            text, _ = cut_at_stop(self._decode(new), stop)
            if len(text) > sent:
                yield text[sent:]
            if on_finish is not None:
                on_finish(self._finish(tokens, new, stop, max_new_tokens, job.cancel, steering))
        finally:
            job.cancel.set()  # an abandoned stream's row stops at the next step
            future.cancel()  # ... or never starts

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
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[Generation]:
        """``generate_batch_detailed`` without blocking the event loop. Runs on actsteer's
        generation thread, which merges calls waiting at the same time (same options) into one
        batched generate, so ``asyncio.gather`` of many calls batches by itself; each row is
        still steered only by its own call. Cancelling the task stops its rows."""
        per_row, options = _batch_options(
            prompts, steering, max_new_tokens, temperature, top_p, stop, seed
        )
        if not prompts:
            return []
        return await worker.run(worker.Job(self, list(prompts), per_row, options))

    async def astream(
        self, prompt: Prompt, steering: SteeringLike = None, **kw: Any
    ) -> AsyncIterator[str]:
        """``stream`` for asyncio: pieces arrive without blocking the event loop."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        done = object()

        def pump() -> None:
            try:
                for piece in self.stream(prompt, steering, cancel=cancel, **kw):
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
            except BaseException as exc:
                loop.call_soon_threadsafe(pieces.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, done)

        task = loop.run_in_executor(None, _copy_context_run(pump))
        try:
            while True:
                item = await pieces.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            await asyncio.shield(task)

    # -- internals ------------------------------------------------------------------------------
    def _collect_eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, list | tuple):
                ids.update(int(e) for e in eos)
        return sorted(ids)

    def _pad(self, encoded: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(t) for t in encoded)
        ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, tokens in enumerate(encoded):
            ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _plan_from(self, compiled, prompt_len: int, mask: torch.Tensor) -> hooks.Plan | None:
        """The plan for a left-padded batch: each row's first real token from its mask."""
        return self._build_plan(compiled, prompt_len, (mask == 0).sum(dim=1).cpu())

    def _build_plan(self, compiled, prompt_len, starts) -> hooks.Plan | None:
        plan = hooks.Plan.build(
            [c[0] for c in compiled],
            prompt_len=prompt_len,
            starts=starts,
            descriptions=[c[1] or "" for c in compiled],
        )
        return None if plan is None else plan.to(self._layer_devices, self._layer_dtypes)

    def _generate_ids(
        self, ids, mask, plan, max_new_tokens, temperature, top_p, seed, stops, streamer=None
    ) -> torch.Tensor:
        """Hugging Face generate with this call's plan active; ``stops`` (``RowStops``) ends
        rows on cancel and stop strings and records where each row ended."""
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.pad_token_id,
            eos_token_id=self._eos_ids or None,
        )
        processors = LogitsProcessorList()
        if temperature > 0:
            processors.append(SeededSampler(ids.shape[0], temperature, top_p, seed))
        state = hooks.CallState(plan) if plan is not None else None
        with torch.inference_mode(), hooks.activate(state):
            return self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stops]),
                streamer=streamer,
            )

    def _decode(self, new: Sequence[int]) -> str:
        return self.tokenizer.decode(_until_eos(new, self._eos_ids), skip_special_tokens=True)

    def _finish(self, prompt, new, stop, max_new_tokens, cancel, steering) -> Generation:
        kept = _until_eos(new, self._eos_ids)
        text, hit = cut_at_stop(self.tokenizer.decode(kept, skip_special_tokens=True), stop)
        ended_on_eos = len(kept) < len(new) and new[len(kept)] in self._eos_ids
        if hit or ended_on_eos:
            reason = "stop"
        elif len(new) >= max_new_tokens:
            reason = "length"
        else:
            reason = "cancelled" if cancel.is_set() else "stop"
        used = len(kept) + (1 if ended_on_eos else 0)
        return Generation(text, len(prompt), used, reason, steering, tuple(new[:used]))


def _trained_positions(vec: SteeringVector) -> str:
    """Where a vector applies by default: where it was trained (a distilled vector's training
    card says), else at every position."""
    card = vec.meta.extra.get("training")
    where = card.get("positions") if isinstance(card, Mapping) else None
    return where if where in ("all", "prompt", "generated") else "all"


def _load_vector_file(path: str, model: ModelFingerprint) -> SteeringVector:
    if path.lower().endswith(".gguf"):
        return SteeringVector.from_gguf(path)
    return SteeringVector.load(path, model=model)


def _until_eos(new: Sequence[int], eos: Sequence[int]) -> list[int]:
    for i, t in enumerate(new):
        if t in eos:
            return list(new[:i])
    return list(new)


def _message(m: object) -> dict[str, str]:
    if isinstance(m, Mapping) and "role" in m and "content" in m:
        return {"role": str(m["role"]), "content": str(m["content"])}
    if isinstance(m, tuple) and len(m) == 2:
        return {"role": str(m[0]), "content": str(m[1])}
    raise SteeringSpecError(
        f"a message must be {{'role', 'content'}} or (role, content), got {m!r}"
    )


def _per_row(steering: object, n: int) -> list[SteeringLike]:
    if isinstance(steering, list):  # a list is per row; anything else applies to every row
        if len(steering) != n:
            raise SteeringSpecError(f"got {len(steering)} steering specs for {n} prompts")
        return list(steering)
    return [steering] * n  # type: ignore[list-item]


def _batch_options(prompts, steering, max_new_tokens, temperature, top_p, stop, seed):
    """Per-row steering and the validated ``(max_new_tokens, temperature, top_p, stop, seed)``
    of a batch call, checked before any work is queued."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise SteeringSpecError("generate_batch needs a list of prompts")
    per_row = _per_row(steering, len(prompts))
    stop = _check_options(max_new_tokens, temperature, top_p, stop)
    return per_row, (max_new_tokens, temperature, top_p, stop, seed)


def _check_options(max_new_tokens, temperature, top_p, stop) -> tuple[str, ...]:
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise SteeringSpecError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not (isinstance(temperature, int | float) and 0.0 <= temperature < float("inf")):
        raise SteeringSpecError(f"temperature must be >= 0, got {temperature!r}")
    if not (isinstance(top_p, int | float) and 0.0 < top_p <= 1.0):
        raise SteeringSpecError(f"top_p must be in (0, 1], got {top_p!r}")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    return tuple(s for s in stop if s)


def _copy_context_run(fn):
    import contextvars

    ctx = contextvars.copy_context()
    return lambda: ctx.run(fn)
