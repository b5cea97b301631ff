"""How close a student is to its teacher, on the teacher's own greedy replies: per-token
KL(teacher || student) over the teacher's cached top-k tokens plus one tail bucket (``topk_kl``,
``mean_kl``, ``batched_kl``: distillation's loss and early stopping), and the exact,
full-vocabulary ``Fidelity`` a steering reaches (``fidelity_of``: what distillation reports)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...apply import hooks
from .teacher import Example, log1mexp, reply_logprobs

if TYPE_CHECKING:
    from ...runtime.surface import Steerable


def _padded_targets(examples: Sequence[Example], device: torch.device):
    """The examples' teacher top-k tensors padded to the longest reply, with a position mask."""
    longest = max(len(e.reply) for e in examples)
    k = examples[0].top_ids.shape[-1]
    ids = torch.zeros((len(examples), longest, k), dtype=torch.long)
    logp = torch.zeros((len(examples), longest, k))
    tail = torch.zeros((len(examples), longest))
    mask = torch.zeros((len(examples), longest))
    for i, e in enumerate(examples):
        n = len(e.reply)
        ids[i, :n], logp[i, :n], tail[i, :n], mask[i, :n] = e.top_ids, e.top_logp, e.tail_logp, 1
    return ids.to(device), logp.to(device), tail.to(device), mask.to(device)


def topk_kl(
    student_logp: torch.Tensor,
    top_ids: torch.Tensor,
    top_logp: torch.Tensor,
    tail_logp: torch.Tensor,
) -> torch.Tensor:
    """Per-position KL(teacher || student) over the teacher's top-k tokens plus one bucket for
    the rest of the vocabulary: exact when the teacher's tail mass is negligible, and never
    above the full KL."""
    s_top = student_logp.gather(-1, top_ids)
    kl = (top_logp.exp() * (top_logp - s_top)).sum(-1)
    s_tail = log1mexp(s_top.logsumexp(-1))
    return kl + tail_logp.exp() * (tail_logp - s_tail)


def mean_kl(
    sm: Steerable,
    examples: Sequence[Example],
    row: hooks.RowSpec | None,
    first_weight: float = 1.0,
) -> torch.Tensor:
    """Mean per-token top-k KL(teacher || student steered by ``row``) over ``examples``; the
    first reply token counts ``first_weight`` times."""
    logp = reply_logprobs(sm, [e.student for e in examples], [e.reply for e in examples], row)
    ids, top, tail, mask = _padded_targets(examples, logp.device)
    if first_weight != 1.0:
        mask = mask.clone()
        mask[:, 0] *= first_weight
    return (topk_kl(logp, ids, top, tail) * mask).sum() / mask.sum()


def batched_kl(sm, examples, row, batch_size, first_weight: float = 1.0) -> float:
    """``mean_kl`` over ``examples`` in batches, without gradients."""
    with torch.no_grad():
        total, n = 0.0, 0.0
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            k = sum(len(e.reply) for e in chunk) + (first_weight - 1.0) * len(chunk)
            total += float(mean_kl(sm, chunk, row, first_weight)) * k
            n += k
        return total / max(n, 1.0)


@dataclass(frozen=True)
class Fidelity:
    """How much of a prompt's effect a steering reproduces, teacher-forced on the prompted model's
    own greedy replies: mean per-token KL(prompted || unsteered) and KL(prompted || steered)."""

    kl_none: float
    kl_vector: float
    inputs: int
    positions: int

    @property
    def removed(self) -> float:
        """Share of the prompt's effect (KL) that the steering reproduces; 1 is perfect,
        0 no better than nothing, negative further from the prompt than no steering."""
        return 1.0 - self.kl_vector / self.kl_none if self.kl_none > 0 else 0.0


def fidelity_of(
    sm: Steerable, examples: Sequence[Example], row: hooks.RowSpec | None, batch_size: int = 8
) -> Fidelity:
    """Exact (full-vocabulary) fidelity of the compiled ``row`` on ``examples``."""
    kl_none, kl_vec, n = 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            replies = [e.reply for e in chunk]
            teacher = reply_logprobs(sm, [e.teacher for e in chunk], replies)
            students = [e.student for e in chunk]
            none = reply_logprobs(sm, students, replies)
            steered = reply_logprobs(sm, students, replies, row) if row else none
            for i, e in enumerate(chunk):
                k = len(e.reply)
                p = teacher[i, :k]
                kl_none += float((p.exp() * (p - none[i, :k])).sum())
                kl_vec += float((p.exp() * (p - steered[i, :k])).sum())
                n += k
    n = max(n, 1)
    return Fidelity(kl_none / n, kl_vec / n, len(examples), n)
