"""SteeredModel: a Hugging Face causal LM and tokenizer with actsteer's hooks, and the calls that
generate with per-call, per-row steering (sync, batched, streaming, async)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import activations, combine, hooks, prompts, resolve, worker
from .default_model import DEFAULT_MODEL_NAME, ensure_converted, is_embedded
from .engine import GenerationOptions, Request
from .errors import GenerationError, SteeringSpecError
from .generation import Generation
from .layers import find_layers, placement
from .local import LocalEngine
from .prompts import Prompt
from .runtime.loading import check_model_kwargs, load_pretrained
from .spec import Steering, SteeringLike
from .tools.spec import ToolSpec
from .vector import ModelFingerprint, SteeringVector

__all__ = ["Prompt", "SteeredModel"]

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
            self._layer_devices[i], self._layer_dtypes[i] = placement(layer)
        self._norms: dict[int, float] | None = None
        self._handles = hooks.install(self.stack, self.layers)
        self.engine = LocalEngine(self)
        """What the adapters talk to (``actsteer.engine.Engine``): requests in, generations out."""

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
        tokenizer, model = load_pretrained(model_id, revision, tokenizer_kwargs, model_kwargs)
        return cls(model, tokenizer, layers_path=layers_path, name=model_id, revision=revision)

    @classmethod
    def shared(cls, model_id: str | None = None, **kwargs: Any) -> SteeredModel:
        """One loaded model per process for each ``(model_id, kwargs)``: adapters built with
        the same id share weights instead of loading them twice. ``None`` is the default model."""
        key = (model_id, repr(sorted(kwargs.items(), key=lambda kv: kv[0])))
        with _SHARED_LOCK:
            if key not in _SHARED:
                load = (
                    cls.default if is_embedded(model_id) else partial(cls.from_pretrained, model_id)
                )
                _SHARED[key] = load(**kwargs)  # kwargs (dtype, device_map) apply to both
            return _SHARED[key]

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Any, **kwargs: Any) -> SteeredModel:
        """Wrap an already loaded model and tokenizer (installs hooks on it)."""
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def default(cls, *, progress: bool = True, **kwargs: Any) -> SteeredModel:
        """The embedded SmolLM2-135M-Instruct, cached on first use; kwargs go to from_pretrained."""
        check_model_kwargs(kwargs)
        folder = ensure_converted(progress=progress)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, **{"dtype": torch.float32, **kwargs})
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
    def render(self, prompt: Prompt, tools: Sequence[ToolSpec] = ()) -> str:
        """The exact text sent to the model: a raw string as is, messages through the chat
        template (with the generation prompt appended and any ``tools`` offered)."""
        return prompts.render(self.tokenizer, prompt, tools)

    def encode(self, prompt: Prompt, tools: Sequence[ToolSpec] = ()) -> list[int]:
        """Token ids of a prompt (with ``tools`` offered through the chat template), exactly as
        a generate call sends them."""
        return prompts.encode(self.tokenizer, prompt, tools)

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
        and ``positions`` overrides where they apply (see ``actsteer.resolve``)."""
        return resolve.resolve(self, steering, coeff=coeff, positions=positions)

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
            self._norms = activations.typical_norms(self)
        return dict(self._norms)

    def row_spec(self, steering: SteeringLike) -> combine.Compiled:
        """Compile one row's steering into per-layer tensors for this model."""
        steerings = self.resolve(steering)
        if not any(not s.is_zero for s in steerings):
            return combine.NO_STEERING
        return combine.compile_row(steerings, self.fingerprint, self.activation_norms())

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
        this thread or task only. Each sequence's first forward (from position 0) counts as its
        prompt (a chunked prefill needs ``generate``/the adapters, which know the prompt)."""
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
        return activations.hidden_states(
            self, encoded, layers, steering=steering, batch_size=batch_size, progress=progress
        )

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
        return activations.continuation_logprobs(self, prompt, continuation, steering)

    # -- generation: requests for self.engine ------------------------------------------------
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
        return prompts.left_pad(encoded, self.pad_token_id, self.device)

    def _build_plan(self, compiled, prompt_len, starts) -> hooks.Plan | None:
        return self._steerable(
            combine.plan(
                compiled,
                prompt_len=prompt_len,
                starts=starts,
                devices=self._layer_devices,
                dtypes=self._layer_dtypes,
            )
        )

    def _steerable(self, plan: hooks.Plan | None) -> hooks.Plan | None:
        """``plan``, unless ``close()`` removed the hooks that would apply it (never silent)."""
        if plan is not None and not self._handles:
            raise GenerationError(f"{self!r} was closed (its hooks are removed): cannot steer")
        return plan


def _pieces(
    items: Iterator[str | Generation], on_finish: Callable[[Generation], None] | None
) -> Iterator[str]:
    for item in items:
        if isinstance(item, Generation):
            if on_finish is not None:
                on_finish(item)
        else:
            yield item
