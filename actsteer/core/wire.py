"""A steering written as data: a mapping of ``Steering`` fields around an expression
(``{"expression": "refusal", "operator": "ablate"}``), alone or in a JSON list. It is the one
form that names every option and travels as JSON, so the same value steers in-process, in a
command-line flag and on a server (the remote engine sends it, the vLLM plugin reads it)."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import SteeringSpecError
from .steering import check_mode

#: The fields of a steering written as a mapping: ``Steering``'s own, with ``expression``
#: naming the vectors.
SPEC_FIELDS = ("expression", "coeff", "layers", "positions", "operator", "relative", "force")
#: Steerings in one call's list, at most, where they travel as JSON (a server request).
MAX_SPECS = 16


def spec_options(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A mapping steering, checked: its expression and the ``Steering`` options it sets."""
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
    check_mode(
        options.get("positions", "all"), options.get("operator", "add"), options.get("coeff", 1.0)
    )
    for flag in ("relative", "force"):
        if not isinstance(options.get(flag, False), bool):
            raise SteeringSpecError(f"'{flag}' must be true or false, got {options[flag]!r}")
    return expression, options


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
