"""Steering resolution: every accepted steering form (a vector, a ``Steering``, an expression
such as ``"json:4 + no-disclaimer"``, a list of them) becomes a tuple of ``Steering`` values for
one model. ``check`` validates a form without a model, so both adapters refuse the same bad
steering, with the same error, when they are built."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from . import presets
from .core.expressions import parse
from .core.steering import POSITIONS, TRAINED_POSITIONS, Steering, SteeringLike, Term
from .core.vector import SteeringVector
from .core.wire import json_steerings, spec_options
from .errors import SteeringSpecError
from .sources import VectorSource


def from_text(text: str) -> SteeringLike:
    """A steering written as text (a command-line flag): an expression, or JSON as a server
    request carries it (``json_steerings``). Checked like ``check``."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        check(text)
        return text
    specs = [{"expression": e, **options} for e, options in json_steerings(stripped)]
    check(specs)
    return specs


def check(steering: object, *, coeff: object = None, positions: object = None) -> None:
    """Raise ``SteeringSpecError`` (an ``ActsteerError``) for a steering form that can never
    steer: a wrong type, an expression that does not parse or names an unknown preset, a
    non-finite ``coeff`` or an unknown ``positions``. Cheap: no model, no vector is loaded."""
    if steering is None or isinstance(steering, SteeringVector | Steering):
        pass
    elif isinstance(steering, str):
        for term in parse(steering).terms:
            if not term.is_file:
                presets.get(term.source)
    elif isinstance(steering, Mapping):
        check(spec_options(steering)[0])
    elif isinstance(steering, list | tuple):
        for item in steering:
            check(item)
    else:
        raise SteeringSpecError(
            f"cannot steer with a {type(steering).__name__}; use an expression string, a "
            "mapping of Steering fields, a SteeringVector, a Steering, a list of them, or None"
        )
    if coeff is not None and (
        isinstance(coeff, bool) or not isinstance(coeff, int | float) or not math.isfinite(coeff)
    ):
        raise SteeringSpecError(f"steering_coeff must be a finite number, got {coeff!r}")
    if positions is not None and positions not in POSITIONS:
        raise SteeringSpecError(f"unknown positions {positions!r}; use one of {POSITIONS}")


def resolve(
    source: VectorSource,
    steering: SteeringLike,
    *,
    coeff: float | None = None,
    positions: str | None = None,
) -> tuple[Steering, ...]:
    """``steering`` as ``Steering`` values for the model behind ``source``; ``coeff``
    multiplies every coefficient and ``positions`` overrides where they apply (the adapters'
    ``steering_coeff`` and ``steering_positions``)."""
    steerings = _resolve(source, steering)
    if coeff is not None or positions is not None:
        steerings = tuple(
            s.with_options(
                coeff=s.coeff * (1.0 if coeff is None else coeff),
                positions=positions or s.positions,
            )
            for s in steerings
        )
    return steerings


def _resolve(source: VectorSource, steering: SteeringLike) -> tuple[Steering, ...]:
    if steering is None:
        return ()
    if isinstance(steering, Steering):
        return (steering,)
    if isinstance(steering, SteeringVector):
        where = trained_positions(steering)
        card = steering.meta.extra.get("steering_card")
        if isinstance(card, Mapping) and "coeff" in card:  # a calibrated vector
            return (
                Steering(
                    steering, float(card["coeff"]), layers=card.get("layers"), positions=where
                ),
            )
        return (Steering(steering, positions=where),)
    if isinstance(steering, str):
        return _expression(source, steering)
    if isinstance(steering, Mapping):
        expression, options = spec_options(steering)
        return tuple(s.with_options(**options) for s in _expression(source, expression))
    if isinstance(steering, Sequence):
        return tuple(s for item in steering for s in _resolve(source, item))
    raise SteeringSpecError(
        f"cannot steer with a {type(steering).__name__}; pass an expression, a mapping of "
        "Steering fields, a SteeringVector, a Steering, a list of them, or None"
    )


def _expression(source: VectorSource, text: str) -> tuple[Steering, ...]:
    """``"json:4 + no-disclaimer"``: presets (cached per model) and ``file:`` vectors, grouped
    by the positions their presets ask for."""
    groups: dict[str, list[Term]] = {}
    for t in parse(text).terms:
        label = dataclasses.replace(t, coeff=1.0).canonical()
        if t.is_file:
            vec = source.file(t.path or "")
            card = vec.meta.extra.get("steering_card")
            if isinstance(card, Mapping) and "coeff" in card:
                # a calibrated file, like a preset: coefficient 1 is its calibrated setting
                vec = vec.select(t.layers or card.get("layers") or vec.layers) * float(
                    card["coeff"]
                )
            elif t.layers:
                vec = vec.select(t.layers)
            where = trained_positions(vec)
        else:
            vec = source.vector(t.source, t.layers)
            where = presets.get(t.source).positions
        groups.setdefault(where, []).append(Term(vec, t.coeff, name=label))
    return tuple(Steering(terms, positions=pos) for pos, terms in groups.items())


def trained_positions(vec: SteeringVector) -> str:
    """Where a vector applies by default: a per-position (ActAdd) vector at the first prompt
    positions; else where it was trained (a distilled vector's training card says), else at
    every position."""
    if vec.is_positional:
        return "actadd"
    card = vec.meta.extra.get("training")
    where = card.get("positions") if isinstance(card, Mapping) else None
    return where if where in TRAINED_POSITIONS else "all"
