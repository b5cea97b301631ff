"""Steering resolution: every accepted steering form (a vector, a ``Steering``, an expression
such as ``"json:4 + no-disclaimer"``, a list of them) becomes a tuple of ``Steering`` values for
one model. ``check`` validates a form without a model, so both adapters refuse the same bad
steering, with the same error, when they are built."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import presets
from .core.expressions import parse
from .core.steering import MAX_ABLATE_STRENGTH, OPERATORS, POSITIONS, Steering, SteeringLike, Term
from .core.vector import ModelFingerprint, SteeringVector
from .errors import CoefficientError, SteeringSpecError

if TYPE_CHECKING:
    from .runtime.model import SteeredModel


#: The fields of a steering written as a mapping (a JSON object over HTTP): ``Steering``'s own,
#: with ``expression`` naming the vectors (``{"expression": "refusal", "operator": "ablate"}``).
SPEC_FIELDS = ("expression", "coeff", "layers", "positions", "operator", "relative", "force")
#: Steerings in one call's list, at most, where they travel as JSON (a server request).
MAX_SPECS = 16


def spec_options(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A mapping steering, checked: its expression and the ``Steering`` options it sets. The
    one form that names every option and travels as JSON, so the same value steers in-process
    and on a server."""
    unknown = sorted(map(repr, set(spec) - set(SPEC_FIELDS)))
    if unknown:
        raise SteeringSpecError(
            f"unknown steering fields [{', '.join(unknown)}]; use {list(SPEC_FIELDS)}"
        )
    expression = spec.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        raise SteeringSpecError("a steering mapping needs 'expression', a steering expression")
    options = {k: spec[k] for k in SPEC_FIELDS[1:] if spec.get(k) is not None}
    if "coeff" in options:
        options["coeff"] = _finite_number(options["coeff"], "'coeff'")
    if "layers" in options:
        layers = options["layers"]
        if (
            isinstance(layers, str | bytes | Mapping)
            or not isinstance(layers, Sequence)
            or not layers
            or not all(
                isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 0
                for x in layers
            )
        ):
            raise SteeringSpecError(f"'layers' must be a list of non-negative ints, got {layers!r}")
        options["layers"] = tuple(int(x) for x in layers)
    where, operator = options.get("positions", "all"), options.get("operator", "add")
    if not isinstance(where, str) or where not in POSITIONS:
        raise SteeringSpecError(f"unknown positions {where!r}; use {POSITIONS}")
    if not isinstance(operator, str) or operator not in OPERATORS:
        raise SteeringSpecError(f"unknown operator {operator!r}; use {OPERATORS}")
    if operator == "ablate" and where == "actadd":
        raise SteeringSpecError(
            'ablation at ActAdd positions is not defined; ablate at "all" or "prompt" positions'
        )
    if operator == "ablate" and not 0.0 <= options.get("coeff", 1.0) <= MAX_ABLATE_STRENGTH:
        raise CoefficientError(
            f"ablation strength must be in [0, {MAX_ABLATE_STRENGTH}] (1 removes the "
            f"direction), got {options['coeff']}"
        )
    for flag in ("relative", "force"):
        if not isinstance(options.get(flag, False), bool):
            raise SteeringSpecError(f"'{flag}' must be true or false, got {options[flag]!r}")
    return expression, options


def _finite_number(value: object, what: str) -> float:
    """``value`` as a finite float, or a ``SteeringSpecError`` (also for ints too large)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SteeringSpecError(f"{what} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SteeringSpecError(f"{what} must be a finite number, got {value!r}")
    return number


def json_steerings(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Steering JSON, as a server request or a command-line flag carries it: an object of
    ``Steering`` fields or a list of 1 to ``MAX_SPECS`` of them, each checked
    (``spec_options``: its expression and options)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SteeringSpecError(f"steering JSON is not valid JSON ({exc})") from exc
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > MAX_SPECS:
        raise SteeringSpecError(f"steering JSON: a list of 1 to {MAX_SPECS} steerings")
    if not all(isinstance(item, dict) for item in items):
        raise SteeringSpecError(
            "each steering in JSON must be a JSON object of Steering fields (one, or a list of "
            "such objects)"
        )
    return [spec_options(item) for item in items]


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
    sm: SteeredModel,
    steering: SteeringLike,
    *,
    coeff: float | None = None,
    positions: str | None = None,
) -> tuple[Steering, ...]:
    """``steering`` as ``Steering`` values for ``sm``; ``coeff`` multiplies every coefficient
    and ``positions`` overrides where they apply (the adapters' ``steering_coeff`` and
    ``steering_positions``)."""
    steerings = _resolve(sm, steering)
    if coeff is not None or positions is not None:
        steerings = tuple(
            s.with_options(
                coeff=s.coeff * (1.0 if coeff is None else coeff),
                positions=positions or s.positions,
            )
            for s in steerings
        )
    return steerings


def _resolve(sm: SteeredModel, steering: SteeringLike) -> tuple[Steering, ...]:
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
        return _expression(sm, steering)
    if isinstance(steering, Mapping):
        expression, options = spec_options(steering)
        return tuple(s.with_options(**options) for s in _expression(sm, expression))
    if isinstance(steering, Sequence):
        return tuple(s for item in steering for s in _resolve(sm, item))
    raise SteeringSpecError(
        f"cannot steer with a {type(steering).__name__}; pass an expression, a mapping of "
        "Steering fields, a SteeringVector, a Steering, a list of them, or None"
    )


def _expression(sm: SteeredModel, text: str) -> tuple[Steering, ...]:
    """``"json:4 + no-disclaimer"``: presets (cached per model) and ``file:`` vectors, grouped
    by the positions their presets ask for."""
    groups: dict[str, list[Term]] = {}
    for t in parse(text).terms:
        label = dataclasses.replace(t, coeff=1.0).canonical()
        if t.is_file:
            # a model may keep the files it has read (a server reads each one once)
            read = getattr(sm, "vector_file", None)
            vec = read(t.path) if callable(read) else load_vector_file(t.path or "", sm.fingerprint)
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
            # a model that cannot train (a server's front end) only reads prepared vectors
            prepare = getattr(sm, "prepares_presets", True)
            vec = presets.ready_vector(sm, t.source, layers=t.layers, prepare=prepare)
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
    return where if where in ("all", "prompt", "generated") else "all"


def load_vector_file(path: str, model: ModelFingerprint) -> SteeringVector:
    """A ``file:`` term's vector: GGUF by extension, else actsteer's safetensors format."""
    if path.lower().endswith(".gguf"):
        return SteeringVector.from_gguf(path)
    return SteeringVector.load(path, model=model)
