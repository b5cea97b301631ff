"""Distillation's settings, as a value: a preset's JSON names some of them, and its content hash
includes them all (defaults too), so that a changed default is a different vector. It lives in
``core`` rather than ``train`` because the preset catalogue reads it, and resolving a steering
must import nothing that trains."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import SteeringSpecError


@dataclass(frozen=True)
class DistillConfig:
    """Training settings. ``lr`` is Adam's step in units of each layer's typical per-coordinate
    activation (``norm / sqrt(hidden)``), so one rate suits every layer and model size.
    ``stack`` is the share of each batch trained *with* the prompt as well: on those rows the
    target is the prompted model itself, so the vector learns to do nothing on top of the
    prompt it replaces (a user who sends both must not get an over-steered reply). ``select``
    is how the final coefficient is chosen from ``coeffs`` on dev (``loop.choose_coeff``):
    ``"replace"`` (the prompt alone, stacking no worse than training left it) or ``"mixture"``."""

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
    stack: float = 0.25
    select: str = "replace"

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
        if isinstance(self.stack, bool) or not (
            isinstance(self.stack, int | float) and 0.0 <= self.stack < 1.0
        ):
            raise SteeringSpecError(f"distill: stack must be in [0, 1), got {self.stack!r}")
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
        if self.select not in ("replace", "mixture"):
            raise SteeringSpecError(
                f"distill: select must be 'replace' or 'mixture', got {self.select!r}"
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
