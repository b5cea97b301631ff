"""Prompt-template vectors by a mean difference: the hidden states of chats with a system prompt
minus the same chats without it, over the tokens both end with. Fast and training-free; the
starting point ``distill`` can grow from (``init="mean_diff"``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch

from ..core.vector import SteeringVector
from ..data import neutral_inputs
from ..errors import SteeringSpecError
from ..runtime import worker
from .common import check_fits, chosen_layers, vector_meta
from .distill.teacher import chats

if TYPE_CHECKING:
    from ..runtime.surface import Steerable


@worker.on_worker
def prompt_template(
    sm: Steerable,
    system_prompt: str,
    inputs: Sequence[str] | None = None,
    layers: Iterable[int] | None = None,
    *,
    read: Literal["suffix", "last"] = "suffix",
    batch_size: int = 16,
    progress: bool | None = None,
) -> SteeringVector:
    """Compile a system prompt (or a user-prompt template containing ``{input}``) into a vector.

    For each user input, the *with* side is the chat the deployment would send with the system
    prompt (or with the input placed into the template), the *without* side exactly what a call
    without it sends (through the same chat template, including any default system prompt the
    template inserts). The vector is the mean difference of hidden states over the tokens both
    sides share at their end (the user turn and the assistant header), or only the last token.
    """
    if not isinstance(system_prompt, str) or not system_prompt.strip():
        raise SteeringSpecError("prompt_template needs a non-empty system prompt or template")
    inputs = list(inputs) if inputs is not None else neutral_inputs("train")
    if not inputs:
        raise SteeringSpecError("prompt_template needs at least one user input")
    chosen = chosen_layers(sm, layers)
    is_template = "{input}" in system_prompt
    with_side, without_side = chats(system_prompt, inputs, is_template)
    with_ids = [sm.encode(m) for m in with_side]
    check_fits(sm, "prompt_template", max(map(len, with_ids)))
    without_ids = [sm.encode(m) for m in without_side]
    states = sm.hidden_states_of_ids(
        with_ids + without_ids, chosen, batch_size=batch_size, progress=progress
    )
    n = len(inputs)
    directions = {}
    for layer in chosen:
        diffs = []
        for i in range(n):
            a, b = states[layer][i], states[layer][n + i]
            k = 1 if read == "last" else _common_suffix(with_ids[i], without_ids[i])
            if k == 0:
                raise SteeringSpecError(
                    "with and without the prompt share no final tokens; use read='last'"
                )
            diffs.append((a[-k:] - b[-k:]).mean(0))
        directions[layer] = torch.stack(diffs).mean(0)
    source = {
        "system_prompt": system_prompt,
        "template": is_template,
        "inputs": len(inputs),
        "inputs_sha256": hashlib.sha256("\n".join(inputs).encode()).hexdigest()[:16],
        "read": read,
        "prompt_tokens_saved": sum(len(a) - len(b) for a, b in zip(with_ids, without_ids)) / n,
    }
    meta = replace(vector_meta(sm, "prompt_template", source, chosen), recommended_coeff=1.0)
    return SteeringVector(directions, meta)


def _common_suffix(a: Sequence[int], b: Sequence[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[-1 - k] == b[-1 - k]:
        k += 1
    return k
