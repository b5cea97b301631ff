"""What every way of making a vector shares: the layers it reads, and the metadata it records
(method, inputs and their hash, the model's fingerprint, each layer's typical norm)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..core.vector import VectorMeta
from ..errors import ContextWindowError, SteeringSpecError
from ..prompts import context_window

if TYPE_CHECKING:
    from ..runtime.surface import Steerable


def chosen_layers(sm: Steerable, layers: Iterable[int] | None) -> list[int]:
    chosen = sorted(set(layers)) if layers is not None else list(range(sm.num_layers))
    if not chosen:
        raise SteeringSpecError("no layers to extract")
    return chosen


def check_fits(sm: Steerable, what: str, longest: int, reply_tokens: int = 0) -> None:
    """Refuse, before any work, prompts whose longest (``longest`` tokens, with ``reply_tokens``
    generated after it) does not fit the model's context window: past it a model's states and
    replies are garbage (transformers only warns), and so would the vector be."""
    window = context_window(sm.model.config, sm.tokenizer)
    if window is not None and longest + reply_tokens > window:
        more = f" and the teacher replies with up to {reply_tokens} more" if reply_tokens else ""
        raise ContextWindowError(
            f"{what}: the prompt with its longest input is {longest} tokens{more}, over the "
            f"model's context window of {window} tokens; shorten the prompt or the inputs"
        )


def vector_meta(sm: Steerable, method: str, source: dict, layers: list[int]) -> VectorMeta:
    norms = sm.activation_norms()
    blob = json.dumps(source, sort_keys=True, default=str).encode()
    source = dict(source, sha256=hashlib.sha256(blob).hexdigest()[:16])
    return VectorMeta(
        model=sm.fingerprint,
        method=method,
        source=source,
        layer_norms={layer: norms[layer] for layer in layers},
    )
