"""Measuring steering: how faithfully a vector reproduces the prompt it replaces.

``fidelity`` follows the definition used throughout actsteer: teacher-forced on the
system-prompted model's own greedy continuation, the mean KL(P_prompt || P_vector) over positions,
reported as the share of the unsteered KL(P_prompt || P_none) that the vector removes
(1.0 = indistinguishable from sending the prompt, 0 = no better than nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import worker
from ..model import SteeredModel
from ..spec import SteeringLike


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


@dataclass(frozen=True)
class Fidelity:
    """Fidelity of a vector to a system prompt over a set of held-out inputs."""

    kl_none: float
    kl_vector: float
    inputs: int
    positions: int

    @property
    def removed(self) -> float:
        """Share of the prompt's effect (KL) that the vector reproduces; 1 is perfect."""
        return 1.0 - self.kl_vector / self.kl_none if self.kl_none > 0 else 0.0


@worker.on_worker
def fidelity(
    sm: SteeredModel,
    system_prompt: str,
    steering: SteeringLike,
    inputs: Sequence[str],
    *,
    max_new_tokens: int = 24,
) -> Fidelity:
    """Teacher-forced KL of the vector-steered model to the system-prompted model on the
    latter's own greedy continuations, against the same KL for the unsteered model."""
    with_prompt = [
        [{"role": "system", "content": system_prompt}, {"role": "user", "content": x}]
        for x in inputs
    ]
    without = [[{"role": "user", "content": x}] for x in inputs]
    continuations = sm.generate_batch(with_prompt, None, max_new_tokens=max_new_tokens)
    kl_none, kl_vec, n = 0.0, 0.0, 0
    for w, wo, cont in zip(with_prompt, without, continuations):
        if not cont:
            continue
        p = sm.continuation_logprobs(w, cont)
        kl_none += float(kl_divergence(p, sm.continuation_logprobs(wo, cont)).sum())
        kl_vec += float(kl_divergence(p, sm.continuation_logprobs(wo, cont, steering)).sum())
        n += p.shape[0]
    n = max(n, 1)
    return Fidelity(kl_none / n, kl_vec / n, len(inputs), n)
