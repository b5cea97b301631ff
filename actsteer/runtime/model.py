"""SteeredModel: a Hugging Face causal LM and tokenizer with actsteer's hooks, and the calls that
generate with per-call, per-row steering (sync, batched, streaming, async)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .. import prompts, resolve
from ..apply import combine, hooks
from ..core.steering import Steering, SteeringLike
from ..core.vector import ModelFingerprint, SteeringVector
from ..default_model import DEFAULT_MODEL_NAME, ensure_converted, is_embedded
from ..presets import Preset
from ..prompts import Prompt
from ..sources import prepared, read_file
from ..tools.spec import ToolSpec
from . import activations, worker
from .calls import GenerationCalls
from .handle import ModelHandle
from .layers import find_layers
from .loading import check_model_kwargs, load_pretrained
from .local import LocalEngine

__all__ = ["Prompt", "SteeredModel"]

_SHARED: dict[tuple[str | None, str], SteeredModel] = {}
_SHARED_LOCK = threading.Lock()


class SteeredModel(GenerationCalls):
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
        self.handle = ModelHandle(model, tokenizer, self.stack, self.layers, self.fingerprint)
        """The working parts the engine, activation reads and training use (hooks installed)."""
        self.pad_token_id: int = self.handle.pad_token_id
        self._norms: dict[int, float] | None = None
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
        self.handle.close()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.fingerprint.hidden_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The ids that end a reply (from the generation config and the tokenizer)."""
        return self.handle.eos_token_ids

    @property
    def device(self) -> torch.device:
        return self.handle.device

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
        return self.handle.encode(prompt, tools)

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
        return self.vector(name, layers)

    def vector(self, name: str, layers: Sequence[int] | None = None) -> SteeringVector:
        """``preset`` as a ``VectorSource`` (what ``resolve`` asks): a preset with no vector
        prepared for this model is prepared now, once (``actsteer.train.prepare``)."""
        return prepared.ready(self, name, layers, self._prepare)

    def _prepare(self, preset: Preset) -> SteeringVector:
        from ..train.prepare import prepare  # explicit preparation: a preset's first use here

        return prepare(self, preset)

    def file(self, path: str) -> SteeringVector:
        """The vector of a ``file:`` term, checked against this model."""
        return read_file(path, self.fingerprint)

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
        return self.handle.plan([self.row_spec(s) for s in steerings], prompt_len, starts)

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
