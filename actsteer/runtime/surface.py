"""``Steerable``: what the engine, activation reads and training use of a steered model, as a
protocol. ``SteeredModel`` is the implementation; the modules it is built from (``local``,
``activations``) and the training code depend on this surface, not on the class, so the model
can import them without an import cycle and a test can hand them a stand-in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from ..apply.combine import Compiled
from ..core.steering import SteeringLike
from ..prompts import Prompt
from ..sources import VectorSource
from ..tools.spec import ToolSpec
from .handle import ModelHandle


class Steerable(VectorSource, Protocol):
    """A hooked causal LM that steers per call (``SteeredModel``)."""

    model: torch.nn.Module
    tokenizer: Any
    handle: ModelHandle
    pad_token_id: int

    @property
    def hidden_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    def encode(self, prompt: Prompt, tools: Sequence[ToolSpec] = ()) -> list[int]: ...

    def row_spec(self, steering: SteeringLike) -> Compiled: ...

    def hidden_states(
        self,
        prompts: Sequence[Prompt],
        layers: Sequence[int] | range,
        *,
        steering: SteeringLike = None,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> dict[int, list[torch.Tensor]]: ...

    def hidden_states_of_ids(
        self,
        encoded: Sequence[Sequence[int]],
        layers: Sequence[int] | range,
        *,
        steering: SteeringLike = None,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> dict[int, list[torch.Tensor]]: ...
