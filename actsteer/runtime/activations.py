"""Reading a model's hidden states and teacher-forced log-probabilities, optionally steered:
what extraction, evaluation and the activation-norm reference are built on. Runs on actsteer's
generation thread (``SteeredModel`` routes the calls there)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..apply import combine, hooks
from ..core.steering import SteeringLike
from ..errors import LayerError, SteeringSpecError
from ..prompts import Prompt

if TYPE_CHECKING:
    from .surface import Steerable

#: Neutral text used to measure each layer's typical activation norm.
NORM_TEXTS = (
    "The weather report for tomorrow mentions light rain in the afternoon.",
    "Please list three common uses for a spreadsheet in a small office.",
    "A train leaves the station at nine and arrives two hours later.",
    "Water boils at a lower temperature at high altitude than at sea level.",
)


def typical_norms(sm: Steerable) -> dict[int, float]:
    """Each layer's mean hidden-state norm per token on ``NORM_TEXTS``, skipping each row's
    first token (attention sinks carry outsized norms)."""
    states = hidden_states(sm, [sm.encode(t) for t in NORM_TEXTS], range(sm.num_layers))
    return {
        layer: float(torch.cat([r[1:].norm(dim=-1) for r in rows]).mean())
        for layer, rows in states.items()
    }


def hidden_states(
    sm: Steerable,
    encoded: Sequence[Sequence[int]],
    layers: Sequence[int] | range,
    *,
    steering: SteeringLike = None,
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[int, list[torch.Tensor]]:
    """Outputs of ``layers`` (after any steering) for token-id rows, without padding:
    ``{layer: [(tokens, hidden), ...]}``. Batched; each forward stops after the deepest layer."""
    from tqdm.auto import tqdm

    layers = sorted(set(layers))
    bad = [x for x in layers if not 0 <= x < sm.num_layers]
    if bad or not layers:
        raise LayerError(f"layers {bad or '[]'} out of range 0-{sm.num_layers - 1}")
    if batch_size < 1:
        raise SteeringSpecError(f"batch_size must be >= 1, got {batch_size}")
    compiled = sm.row_spec(steering) if steering is not None else combine.NO_STEERING
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    starts = range(0, len(encoded), batch_size)
    show = progress if progress is not None else len(starts) > 4
    for start in tqdm(starts, desc="actsteer: reading activations", disable=not show):
        chunk = encoded[start : start + batch_size]
        ids, mask = sm.handle.pad(chunk)
        plan = sm.handle.left_pad_plan([compiled] * len(chunk), mask)
        state = hooks.CallState(plan, capture_layers=frozenset(layers), stop_after=layers[-1])
        with torch.inference_mode(), hooks.activate(state):
            try:
                sm.model(input_ids=ids, attention_mask=mask, use_cache=False)
            except hooks.StopForward:
                pass
        for layer in layers:
            h = state.captured[layer].float().cpu()
            for row, tokens in enumerate(chunk):
                out[layer].append(h[row, h.shape[1] - len(tokens) :].clone())
    return out


def continuation_logprobs(
    sm: Steerable,
    prompt: Prompt,
    continuation: str | Sequence[int],
    steering: SteeringLike = None,
) -> torch.Tensor:
    """Log-probabilities ``(tokens, vocab)`` of each position of ``continuation`` after
    ``prompt``, steered as a generate call would be (the continuation counts as generated)."""
    prompt_ids = sm.encode(prompt)
    cont = (
        sm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if isinstance(continuation, str)
        else list(continuation)
    )
    if not cont:
        raise SteeringSpecError("the continuation is empty")
    ids, mask = sm.handle.pad([prompt_ids + cont])
    plan = sm.handle.left_pad_plan([sm.row_spec(steering)], mask, prompt_len=len(prompt_ids))
    with torch.inference_mode(), hooks.activate(hooks.CallState(plan) if plan else None):
        logits = sm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    span = logits[0, len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(cont)].float()
    return torch.log_softmax(span, dim=-1).cpu()
