"""Measuring steering: how faithfully a vector reproduces the prompt it replaces.

``fidelity`` follows the definition used throughout actsteer (and by ``extract.distill``):
teacher-forced on the system-prompted model's own greedy reply, the mean KL(P_prompt || P_vector)
over its tokens, reported as the share of the unsteered KL(P_prompt || P_none) that the vector
removes (1.0 = indistinguishable from sending the prompt, 0 = no better than nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..core.steering import SteeringLike
from ..runtime import worker
from ..runtime.model import SteeredModel
from ..train.distill.fidelity import Fidelity, fidelity_of
from ..train.distill.teacher import teacher_examples

__all__ = ["Fidelity", "fidelity", "kl_divergence", "reply_perplexity"]


def kl_divergence(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """Per-position ``KL(P || Q)`` from log-probabilities ``(..., vocab)``."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


@worker.on_worker
def reply_perplexity(sm: SteeredModel, chats: Sequence[list], replies: Sequence[str]) -> float:
    """Perplexity of ``replies`` to ``chats`` under the unsteered model: the quality cost of a
    steering is the ratio of this for steered replies to that for unsteered ones."""
    nll, n = 0.0, 0
    for chat, reply in zip(chats, replies):
        ids = sm.tokenizer(reply, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        lp = sm.continuation_logprobs(chat, ids)
        nll -= float(lp[range(len(ids)), ids].sum())
        n += len(ids)
    return math.exp(nll / n) if n else float("nan")


@worker.on_worker
def fidelity(
    sm: SteeredModel,
    system_prompt: str,
    steering: SteeringLike,
    inputs: Sequence[str],
    *,
    max_new_tokens: int = 24,
    template: bool | None = None,
) -> Fidelity:
    """Teacher-forced KL of the steered model (without the prompt) to the prompted model on the
    latter's own greedy replies (ending EOS included), against the same KL for the unsteered
    model; ``system_prompt`` may be a user template with ``{input}``. The same measure that
    ``extract.distill`` reports in its training card."""
    if template is None:
        template = "{input}" in system_prompt
    examples = teacher_examples(
        sm, system_prompt, list(inputs), template=template, max_new_tokens=max_new_tokens, top_k=1
    )
    return fidelity_of(sm, examples, sm.row_spec(steering)[0] or None)
