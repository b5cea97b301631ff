"""Context distillation: a system prompt (or a ``{input}`` template) compiled into per-layer
steering vectors that reproduce what the prompt does to the model's next-token distributions.

The *teacher* is the model with the prompt, the *student* the same model without it, steered by
trainable additive vectors at the layers and positions used at inference. The loss is the
forward KL(teacher || student), teacher-forced on the teacher's own greedy replies (generated
once, with the teacher's top-k log-probs cached), plus a penalty on each vector's norm relative to
its layer's typical activation norm. Only the vectors get gradients (``torch.autograd.grad`` asks
for them alone, so the weights are never touched and no weight gradient is computed).

Why not a mean difference over the user turn: a prompt's effect differs from token to token and
acts on the generated positions; the first generated token (where "{" or the first French word is
chosen) matters most. Measured on SmolLM2-135M: mean-difference vectors have *negative* fidelity
for French and JSON prompts.

This module holds the settings and the training loop; the teacher's targets and the KL live in
``teacher``, and ``extract.distill`` is the public entry point.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...apply import hooks
from ...errors import DistillationError, SteeringSpecError
from .fidelity import batched_kl, mean_kl
from .teacher import Example

if TYPE_CHECKING:
    from ...runtime.model import SteeredModel

#: Positions a distilled vector can be trained for (ActAdd's per-position form cannot).
POSITIONS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class DistillConfig:
    """Training settings. ``lr`` is Adam's step in units of each layer's typical per-coordinate
    activation (``norm / sqrt(hidden)``), so one rate suits every layer and model size."""

    steps: int = 70
    lr: float = 0.005
    batch_size: int = 6
    max_new_tokens: int = 24
    top_k: int = 64
    norm_penalty: float = 1.0
    eval_every: int = 10
    patience: int = 4
    coeffs: tuple[float, ...] = (0.75, 1.0, 1.25)
    init: str = "zero"
    first_weight: float = 4.0
    schedule: str = "cosine"
    seed: int = 0

    def lr_factor(self, step: int) -> float:
        """The learning rate's multiplier after ``step`` optimizer steps: constant, or a linear
        warm-up over the first tenth of the steps, then a cosine decay to a tenth."""
        if self.schedule == "constant":
            return 1.0
        warm = max(1, self.steps // 10)
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, self.steps - warm))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t))

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_new_tokens", "top_k", "eval_every", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SteeringSpecError(f"distill: {name} must be a positive int, got {value!r}")
        for name in ("lr", "norm_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise SteeringSpecError(f"distill: {name} must be finite and >= 0, got {value!r}")
        if self.lr <= 0:
            raise SteeringSpecError(f"distill: lr must be > 0, got {self.lr!r}")
        coeffs = tuple(self.coeffs)
        if not coeffs or not all(
            isinstance(c, int | float) and math.isfinite(c) and c > 0 for c in coeffs
        ):
            raise SteeringSpecError(f"distill: coeffs must be positive numbers, got {coeffs!r}")
        object.__setattr__(self, "coeffs", tuple(float(c) for c in coeffs))
        if self.schedule not in ("cosine", "constant"):
            raise SteeringSpecError(
                f"distill: schedule must be 'cosine' or 'constant', got {self.schedule!r}"
            )
        if self.init not in ("mean_diff", "zero"):
            raise SteeringSpecError(
                f"distill: init must be 'mean_diff' or 'zero', got {self.init!r}"
            )


def config(**settings: object) -> DistillConfig:
    """A ``DistillConfig`` from keyword settings; an unknown setting is a clear error."""
    known = {f.name for f in dataclasses.fields(DistillConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SteeringSpecError(f"distill: unknown setting(s) {unknown}; known: {sorted(known)}")
    return DistillConfig(**settings)  # type: ignore[arg-type]


def vector_row(vectors: Mapping[int, torch.Tensor], positions: str) -> hooks.RowSpec:
    """The compiled row that adds ``vectors`` (layer -> tensor) at ``positions``."""
    return {(positions, "add"): (dict(vectors), 1.0)}


@dataclass(frozen=True)
class Trained:
    """The result of ``train``: the chosen vectors and the record of how they were chosen."""

    vectors: dict[int, torch.Tensor]
    coeff: float
    steps_run: int
    best_step: int
    history: tuple[dict, ...]
    dev_kl_none: float
    """The training objective (first reply token weighted, top-k KL) on dev, unsteered..."""
    dev_kl: float
    """... and with the chosen vectors: ``1 - dev_kl / dev_kl_none`` is the dev fidelity."""
    coeff_dev_kl: dict[str, float]


def train(
    sm: SteeredModel,
    train_set: Sequence[Example],
    dev_set: Sequence[Example],
    layers: Sequence[int],
    init: Mapping[int, torch.Tensor],
    config: DistillConfig,
    *,
    positions: str = "all",
    progress: bool | None = None,
    cancel: threading.Event | None = None,
) -> Trained:
    """Adam on per-layer vectors against the teacher's cached distributions, with early stopping
    and the coefficient chosen on ``dev_set``. Deterministic given ``config.seed``."""
    from tqdm.auto import tqdm

    hidden = sm.hidden_size
    norms = sm.activation_norms()
    scale = {x: norms[x] / math.sqrt(hidden) for x in layers}
    params = {
        x: (init[x].to(sm.device, torch.float32) / scale[x]).clone().requires_grad_(True)
        for x in layers
    }
    opt = torch.optim.Adam(list(params.values()), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, config.lr_factor)
    gen = torch.Generator().manual_seed(config.seed)

    def vectors() -> dict[int, torch.Tensor]:
        return {x: params[x] * scale[x] for x in layers}

    def frozen() -> dict[int, torch.Tensor]:
        return {x: v.detach().clone() for x, v in vectors().items()}

    dev_batch = max(config.batch_size, 8)
    weight = config.first_weight

    def dev_loss(vecs: Mapping[int, torch.Tensor] | None) -> float:
        row = vector_row(vecs, positions) if vecs is not None else None
        return batched_kl(sm, dev_set, row, dev_batch, weight)

    dev_none = dev_loss(None)
    best = frozen()
    best_kl = dev_loss(best)
    best_step, bad, step = 0, 0, 0
    history: list[dict] = [{"step": 0, "train_kl": None, "dev_kl": best_kl}]
    order: list[int] = []
    recent: list[float] = []
    bar = tqdm(
        total=config.steps,
        desc="actsteer: distilling",
        disable=not (progress if progress is not None else True),
    )
    try:
        for step in range(1, config.steps + 1):
            if cancel is not None and cancel.is_set():
                raise DistillationError(f"distillation cancelled at step {step}")
            if len(order) < config.batch_size:
                order += torch.randperm(len(train_set), generator=gen).tolist()
            batch = [train_set[i] for i in order[: config.batch_size]]
            del order[: config.batch_size]
            with torch.enable_grad():
                kl = mean_kl(sm, batch, vector_row(vectors(), positions), config.first_weight)
                penalty = sum((p.square().sum() / hidden) for p in params.values())
                loss = kl + config.norm_penalty * penalty
            if not torch.isfinite(loss):
                raise DistillationError(
                    f"the distillation loss became {float(loss.detach())} at step {step}; "
                    "lower the learning rate (lr=) or the number of layers"
                )
            grads = torch.autograd.grad(loss, list(params.values()))
            for p, g in zip(params.values(), grads):
                p.grad = g
            opt.step()
            sched.step()
            for p in params.values():
                p.grad = None
            recent.append(float(kl.detach()))
            bar.update(1)
            if step % config.eval_every == 0 or step == config.steps:
                dev_kl = dev_loss(frozen())
                train_kl = sum(recent) / len(recent)
                recent = []
                history.append({"step": step, "train_kl": train_kl, "dev_kl": dev_kl})
                bar.set_postfix(train_kl=f"{train_kl:.3f}", dev_kl=f"{dev_kl:.3f}")
                if dev_kl < best_kl:
                    best, best_kl, best_step, bad = frozen(), dev_kl, step, 0
                else:
                    bad += 1
                    if bad >= config.patience:
                        break
    finally:
        bar.close()
    coeff_kl = {c: dev_loss({x: v * c for x, v in best.items()}) for c in config.coeffs}
    coeff = min(coeff_kl, key=lambda c: (coeff_kl[c], abs(c - 1.0)))
    return Trained(
        vectors={x: (v * coeff).cpu() for x, v in best.items()},
        coeff=coeff,
        steps_run=step,
        best_step=best_step,
        history=tuple(history),
        dev_kl_none=dev_none,
        dev_kl=coeff_kl[coeff],
        coeff_dev_kl={f"{c:g}": k for c, k in coeff_kl.items()},
    )


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 2)
