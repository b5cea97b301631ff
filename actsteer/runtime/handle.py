"""``ModelHandle``: what the engine, activation reads and distillation need of a loaded model,
as a public surface. ``SteeredModel`` owns one (``sm.handle``); ``local``, ``activations`` and
``teacher`` use it instead of reaching into the model's private state. It holds the hooked
model and tokenizer, where each layer lives (device, dtype), the pad and end-of-sequence ids,
and the hooks' handles, so that a plan for a closed model is refused here, in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import prompts
from ..apply import combine, hooks
from ..core.vector import ModelFingerprint
from ..errors import GenerationError
from ..tools.spec import ToolSpec
from .layers import placement


class ModelHandle:
    """A hooked causal LM's working parts (``SteeredModel.handle``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        stack: torch.nn.Module,
        layers: Sequence[torch.nn.Module],
        fingerprint: ModelFingerprint,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.layers = tuple(layers)
        self.fingerprint = fingerprint
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id: int = int(pad)
        self.eos_token_ids: tuple[int, ...] = _eos_ids(model, tokenizer)
        """The ids that end a reply (from the generation config and the tokenizer)."""
        self.layer_devices: dict[int, torch.device] = {}
        self.layer_dtypes: dict[int, torch.dtype] = {}
        for i, layer in enumerate(self.layers):
            self.layer_devices[i], self.layer_dtypes[i] = placement(layer)
        self._stack = stack
        self._hooks = hooks.install(stack, self.layers)

    @property
    def device(self) -> torch.device:
        """Where input ids go (the input embeddings' device)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def closed(self) -> bool:
        """Whether ``close()`` removed the hooks (the model then cannot be steered)."""
        return not self._hooks

    def close(self) -> None:
        """Remove the hooks, leaving the wrapped model exactly as it was before wrapping."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def reinstall(self) -> None:
        """Install the hooks again after ``close()`` (benchmarks time a model with and
        without them); a no-op while they are installed."""
        if self.closed:
            self._hooks = hooks.install(self._stack, self.layers)

    def encode(self, prompt: prompts.Prompt, tools: Sequence[ToolSpec] = ()) -> list[int]:
        """Token ids of ``prompt`` exactly as a generate call sends them."""
        return prompts.encode(self.tokenizer, prompt, tools)

    def pad(self, encoded: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-id rows as one left-padded batch on the model's device: ``(ids, mask)``."""
        width = max(len(t) for t in encoded)
        ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, tokens in enumerate(encoded):
            ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def plan(
        self,
        compiled: Sequence[combine.Compiled],
        prompt_len: int | torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> hooks.Plan | None:
        """The hook plan for rows of compiled steering (``combine.plan``), on each layer's
        device and dtype."""
        return self.steerable(
            combine.plan(
                compiled,
                prompt_len=prompt_len,
                starts=starts,
                devices=self.layer_devices,
                dtypes=self.layer_dtypes,
            )
        )

    def left_pad_plan(
        self,
        compiled: Sequence[combine.Compiled],
        mask: torch.Tensor,
        prompt_len: int | None = None,
    ) -> hooks.Plan | None:
        """The hook plan for a left-padded batch with attention ``mask``
        (``combine.left_pad_plan``)."""
        plan = combine.left_pad_plan(
            compiled, mask, self.layer_devices, self.layer_dtypes, prompt_len=prompt_len
        )
        return self.steerable(plan)

    def steerable(self, plan: hooks.Plan | None) -> hooks.Plan | None:
        """``plan``, unless ``close()`` removed the hooks that would apply it (never silent)."""
        if plan is not None and self.closed:
            raise GenerationError(
                f"the model {self.fingerprint.name!r} was closed (its hooks are removed): "
                "cannot steer"
            )
        return plan


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> tuple[int, ...]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
    return tuple(sorted(ids))
