"""Steering: what to add (vectors and coefficients), where (layers, positions) and how (operator).

A ``Steering`` is a frozen, printable value. ``layer_deltas`` turns it into per-layer tensors for
one model; the hook machinery in ``hooks.py`` applies them. Nothing here touches a model.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import CoefficientError, LayerError, NonFiniteError, SteeringSpecError
from .labels import layer_span, number
from .vector import ModelFingerprint, SteeringVector, add_aligned, unit

Positions = Literal["all", "prompt", "generated", "actadd"]
Operator = Literal["add", "ablate", "add_norm_preserving"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated", "actadd")
#: Positions a vector can be trained for (an ActAdd vector is per position: it is not trained).
TRAINED_POSITIONS: tuple[str, ...] = POSITIONS[:3]
OPERATORS: tuple[str, ...] = ("add", "ablate", "add_norm_preserving")

#: A layer's steering delta may be at most this many times the layer's typical activation norm.
MAX_DELTA_RATIO = 100.0
#: Ablation strength: 1 removes the direction, 2 reflects it; more is never meaningful.
MAX_ABLATE_STRENGTH = 2.0


def check_mode(positions: object, operator: object, coeff: float = 1.0) -> None:
    """Where and how a steering applies, checked: known positions and operator, no ablation at
    ActAdd positions, an ablation strength in range. The one check for a ``Steering`` and for
    a steering written as a mapping (``actsteer.core.wire``)."""
    if not isinstance(positions, str) or positions not in POSITIONS:
        raise SteeringSpecError(f"unknown positions {positions!r}; use one of {POSITIONS}")
    if not isinstance(operator, str) or operator not in OPERATORS:
        raise SteeringSpecError(f"unknown operator {operator!r}; use one of {OPERATORS}")
    if operator == "ablate" and positions == "actadd":
        raise SteeringSpecError(
            'ablation at ActAdd positions is not defined; ablate at "all" or "prompt" positions'
        )
    if operator == "ablate" and not 0.0 <= coeff <= MAX_ABLATE_STRENGTH:
        raise CoefficientError(
            f"ablation strength must be in [0, {MAX_ABLATE_STRENGTH}] (1 removes the "
            f"direction), got {coeff}"
        )


@dataclass(frozen=True)
class Term:
    """One vector with its coefficient; ``name`` (a preset or file) is used when printing."""

    vector: SteeringVector
    coeff: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vector, SteeringVector):
            raise SteeringSpecError(
                f"a term needs a SteeringVector, got {type(self.vector).__name__}"
            )
        object.__setattr__(self, "coeff", _finite(self.coeff, "term coefficient"))

    def label(self) -> str:
        return self.name or f"<{self.vector.meta.method or 'vector'} {self.vector.digest()[:8]}>"


@dataclass(frozen=True, init=False)
class Steering:
    """A complete steering setting: ``Steering(love - hate, coeff=4, layers=range(6, 12))``.

    ``positions``: ``"all"`` (prompt and generated tokens), ``"prompt"``, ``"generated"`` (only
    new tokens) or ``"actadd"`` (the first prompt positions, as in Turner et al.).
    ``operator``: ``"add"``, ``"ablate"`` (project the terms' directions out, ``coeff`` = strength)
    or ``"add_norm_preserving"``. ``relative=True`` scales each layer's unit direction by the
    layer's typical activation norm, so one coefficient means the same on every layer.
    ``force=True`` applies vectors recorded for another model (hidden size must still match).
    """

    terms: tuple[Term, ...]
    coeff: float
    layers: tuple[int, ...] | None
    positions: Positions
    operator: Operator
    relative: bool
    force: bool

    def __init__(
        self,
        vector_or_terms: SteeringVector | Term | Iterable[SteeringVector | Term | tuple],
        coeff: float = 1.0,
        *,
        layers: Iterable[int] | None = None,
        positions: Positions = "all",
        operator: Operator = "add",
        relative: bool = False,
        force: bool = False,
    ) -> None:
        terms = tuple(_as_term(t) for t in _iter_terms(vector_or_terms))
        if not terms:
            raise SteeringSpecError("a Steering needs at least one vector")
        hidden = {t.vector.hidden_size for t in terms}
        if len(hidden) > 1:
            raise SteeringSpecError(f"terms have different hidden sizes {sorted(hidden)}")
        coeff = _finite(coeff, "coefficient")
        check_mode(positions, operator, coeff)
        if positions != "actadd" and any(t.vector.is_positional for t in terms):
            raise SteeringSpecError('per-position (ActAdd) vectors need positions="actadd"')
        if layers is not None:
            layers = tuple(sorted({_layer(x) for x in layers}))
            if not layers:
                raise SteeringSpecError("layers= is empty; pass None to use the vectors' layers")
        object.__setattr__(self, "terms", terms)
        object.__setattr__(self, "coeff", coeff)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "operator", operator)
        object.__setattr__(self, "relative", bool(relative))
        object.__setattr__(self, "force", bool(force))

    @property
    def is_zero(self) -> bool:
        """True when this steering changes nothing (zero coefficients or zero directions)."""
        if self.coeff == 0.0:
            return True
        return all(
            t.coeff == 0.0 or all(not bool(d.any()) for d in t.vector.directions.values())
            for t in self.terms
        )

    def info(self) -> dict[str, object]:
        """What this steering applies, for traces and response metadata (``steering_info``)."""
        return steering_info([self])

    def key(self) -> str:
        """Content identity: equal keys steer identically (vectors by digest, every option)."""
        return json.dumps(
            {**self.info(), "relative": self.relative, "force": self.force, "at": self.layers},
            sort_keys=True,
            default=list,
        )

    def with_options(self, **changes: object) -> Steering:
        """A copy with some options replaced (``coeff``, ``layers``, ``positions``, ...)."""
        args = {
            "coeff": self.coeff,
            "layers": self.layers,
            "positions": self.positions,
            "operator": self.operator,
            "relative": self.relative,
            "force": self.force,
        }
        args.update(changes)
        return Steering(self.terms, **args)  # type: ignore[arg-type]

    def active_layers(self) -> tuple[int, ...]:
        present = sorted({layer for t in self.terms for layer in t.vector.layers})
        if self.layers is None:
            return tuple(present)
        missing = [x for x in self.layers if x not in present]
        if missing:
            raise LayerError(
                f"layers {missing} were asked for but no vector has a direction there "
                f"(the vectors cover {layer_span(present)})"
            )
        return self.layers

    def describe(self) -> str:
        """One line: terms with coefficients and the options that differ from the defaults."""
        parts = []
        for i, t in enumerate(self.terms):
            c = t.coeff * (1.0 if self.operator == "ablate" else self.coeff)
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            body = t.label() if mag == 1.0 else f"{t.label()}:{number(mag)}"
            parts.append((sign if i or sign == "-" else "") + body)
        text = " ".join(parts).replace(" +", " + ").replace(" -", " - ")
        opts = []
        if self.layers is not None:
            opts.append(f"layers={layer_span(self.layers)}")
        for name, default in (("positions", "all"), ("operator", "add")):
            if getattr(self, name) != default:
                opts.append(f"{name}={getattr(self, name)}")
        if self.operator == "ablate":
            opts.append(f"strength={number(self.coeff)}")
        if self.relative:
            opts.append("relative")
        return text + (f" [{', '.join(opts)}]" if opts else "")

    def explain(
        self,
        model: ModelFingerprint | None = None,
        model_norms: Mapping[int, float] | None = None,
    ) -> str:
        """A readable plan: terms, settings and, given a model, the per-layer delta sizes."""
        lines = [f"Steering: {self.describe()}"]
        for t in self.terms:
            v = t.vector
            lines.append(
                f"  term {t.label()}: coeff {number(t.coeff)}, layers {layer_span(v.layers)}, "
                f"method {v.meta.method or '?'}, made on "
                f"{v.meta.model.name if v.meta.model else 'any model'}, digest {v.digest()}"
            )
        lines.append(
            f"  positions={self.positions} operator={self.operator} coeff={number(self.coeff)} "
            f"relative={self.relative}"
        )
        if model is not None:
            norms = dict(model_norms or {})
            deltas = self.layer_deltas(model, norms)
            for layer, d in deltas.items():
                ref = norms.get(layer)
                size = float(d.norm(dim=-1).max())
                what = "ablated directions" if self.operator == "ablate" else "delta norm"
                tail = f" ({size / ref:.2f}x typical activation {ref:.2f})" if ref else ""
                lines.append(f"  layer {layer:>3}: {what} {size:.3f}{tail}")
        return "\n".join(lines)

    def layer_deltas(
        self, model: ModelFingerprint, model_norms: Mapping[int, float]
    ) -> dict[int, torch.Tensor]:
        """Per-layer tensors for ``model``: the summed delta for add operators, the stacked
        directions ``(k, hidden)`` for ablation. Validates layers, model and magnitudes."""
        for t in self.terms:
            t.vector.check_model(model, force=self.force)
        layers = self.active_layers()
        bad = [x for x in layers if x >= model.num_layers]
        if bad:
            raise LayerError(
                f"layer(s) {bad} out of range: {model.name!r} has layers 0-{model.num_layers - 1}"
            )
        out: dict[int, torch.Tensor] = {}
        for layer in layers:
            parts = []
            for t in self.terms:
                d = t.vector.directions.get(layer)
                if d is None or t.coeff == 0.0:
                    continue
                if self.operator == "ablate":
                    parts.append(d.reshape(-1, d.shape[-1]))
                    continue
                if self.relative:
                    ref = t.vector.meta.layer_norms.get(layer) or model_norms.get(layer)
                    if not ref:
                        raise SteeringSpecError(
                            f"relative=True needs the typical activation norm of layer {layer}"
                        )
                    d = unit(d) * ref
                parts.append(d * (t.coeff * self.coeff))
            if not parts:
                continue
            if self.operator == "ablate":
                out[layer] = torch.cat(parts)
                continue
            delta = parts[0]
            for p in parts[1:]:
                delta = add_aligned(delta, p)
            if not torch.isfinite(delta).all():
                raise NonFiniteError(f"layer {layer}: the combined delta overflowed to inf/NaN")
            ref = model_norms.get(layer)
            size = float(delta.norm(dim=-1).max())
            if ref and size > MAX_DELTA_RATIO * ref:
                raise CoefficientError(
                    f"coefficient too large: the layer-{layer} delta has norm {size:.3g}, "
                    f"{size / ref:.3g}x the layer's typical activation norm {ref:.3g} (limit "
                    f"{MAX_DELTA_RATIO:g}x); typical useful coefficients give 0.1x-8x"
                )
            out[layer] = delta
        return out


def steering_info(steerings: Sequence[Steering]) -> dict[str, object]:
    """What steered a call, for traces and response metadata: the canonical expression and, per
    term, its coefficient, layers and vector digest."""
    return {
        "expression": " + ".join(s.describe() for s in steerings) or None,
        "terms": [
            {
                "name": t.label(),
                "coeff": t.coeff * (1.0 if s.operator == "ablate" else s.coeff),
                "layers": list(s.layers if s.layers is not None else t.vector.layers),
                "digest": t.vector.digest(),
                "positions": s.positions,
                "operator": s.operator,
            }
            for s in steerings
            for t in s.terms
        ],
    }


SteeringLike = (
    SteeringVector
    | Steering
    | str
    | Mapping[str, object]
    | Sequence[SteeringVector | Steering | str | Mapping[str, object]]
    | None
)
"""Every steering form: a vector, a ``Steering``, an expression (``"json:4 - formal"``), a
mapping of ``Steering`` fields naming its vectors by expression (``{"expression": "refusal",
"operator": "ablate"}``, the form that also travels to a server), or a list of them."""


def _iter_terms(x: object) -> Iterable[object]:
    if isinstance(x, SteeringVector | Term):
        return [x]
    if isinstance(x, tuple) and 2 <= len(x) <= 3 and isinstance(x[0], SteeringVector):
        return [x]  # a single (vector, coeff[, name]) pair
    if isinstance(x, Iterable) and not isinstance(x, str | bytes | Mapping):
        return list(x)
    raise SteeringSpecError(
        f"expected a SteeringVector, a Term or a list of them, got {type(x).__name__}"
    )


def _as_term(x: object) -> Term:
    if isinstance(x, Term):
        return x
    if isinstance(x, SteeringVector):
        return Term(x)
    if isinstance(x, tuple) and 2 <= len(x) <= 3 and isinstance(x[0], SteeringVector):
        return Term(*x)
    raise SteeringSpecError(f"cannot use {x!r} as a steering term")


def _finite(x: object, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise SteeringSpecError(f"{what} must be a number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise NonFiniteError(f"{what} must be finite, got {x}")
    return x


def _layer(x: object) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 0:
        raise LayerError(f"layers must be non-negative ints, got {x!r}")
    return int(x)
