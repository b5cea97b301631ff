"""The served model as actsteer's steering resolution sees it, inside a vLLM process.

vLLM owns the weights, so the vectors a request can name are read, not computed, here: the
model's fingerprint and typical activation norms come from a *serve bundle* (JSON written by
``actsteer serve`` from the Hugging Face model before vLLM starts, path in
``$ACTSTEER_SERVE_BUNDLE``), presets from the shipped and cached vectors for that fingerprint
(``actsteer serve`` prepares them), and ``file:`` terms from the vectors folder named in the
bundle. Resolution and combination are actsteer's own (``resolve``, ``combine``), so a request
is steered with exactly the deltas the local engine computes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import combine, resolve
from ..errors import SteeringSpecError
from ..expressions import Expression, parse
from ..spec import POSITIONS
from ..vector import ModelFingerprint

BUNDLE_ENV = "ACTSTEER_SERVE_BUNDLE"
#: The per-request key in ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP).
XARG = "actsteer"


class ServedModel:
    """What ``actsteer.resolve`` needs of a model: fingerprint, layer count, norms."""

    def __init__(
        self,
        fingerprint: ModelFingerprint,
        norms: Mapping[int, float],
        vectors: str | None = None,
    ) -> None:
        self.fingerprint = fingerprint
        self._norms = {int(k): float(v) for k, v in norms.items()}
        self.vectors = Path(vectors) if vectors else None

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str] | None = None) -> ServedModel:
        path = path or os.environ.get(BUNDLE_ENV)
        if not path:
            raise RuntimeError(
                f"actsteer's vLLM plugin needs ${BUNDLE_ENV}: start it with `actsteer serve`"
            )
        data = json.loads(Path(path).read_text())
        return cls(
            ModelFingerprint.from_dict(data["fingerprint"]), data["norms"], data.get("vectors")
        )

    @property
    def num_layers(self) -> int:
        return self.fingerprint.num_layers

    @property
    def hidden_size(self) -> int:
        return self.fingerprint.hidden_size

    def activation_norms(self) -> dict[int, float]:
        return dict(self._norms)

    def hidden_states(self, *args: Any, **kwargs: Any) -> Any:
        """Extraction needs the Hugging Face model: not here."""
        raise SteeringSpecError(
            "this preset has no vector prepared for the served model; `actsteer serve` prepares "
            "every preset before the server starts"
        )

    hidden_states_of_ids = hidden_states


@dataclass(frozen=True)
class Compiled:
    """A request's steering as two delta sets: for its prompt tokens and its generated ones."""

    key: str
    prompt: dict[int, torch.Tensor]
    generated: dict[int, torch.Tensor]


def parse_spec(value: object) -> tuple[str, float | None, str | None]:
    """``extra_args["actsteer"]``: an expression (``"json:4 - formal"``), or a JSON object with
    ``expression`` and optional ``coeff`` and ``positions`` (the ``Steering`` fields)."""
    if not isinstance(value, str) or not value.strip():
        raise SteeringSpecError(f"{XARG} must be a steering expression or a JSON object")
    text = value.strip()
    if not text.startswith("{"):
        return text, None, None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SteeringSpecError(f"{XARG}: not valid JSON ({exc.msg})") from exc
    unknown = set(spec) - {"expression", "coeff", "positions"}
    if unknown:
        raise SteeringSpecError(f"{XARG}: unknown fields {sorted(unknown)}")
    expression, coeff, positions = spec.get("expression"), spec.get("coeff"), spec.get("positions")
    if not isinstance(expression, str):
        raise SteeringSpecError(f"{XARG}: 'expression' must be a string")
    if coeff is not None and not (isinstance(coeff, int | float) and math.isfinite(coeff)):
        raise SteeringSpecError(f"{XARG}: 'coeff' must be a finite number")
    if positions is not None and positions not in POSITIONS:
        raise SteeringSpecError(f"{XARG}: unknown positions {positions!r}")
    return expression, coeff, positions


def server_files(model: ServedModel, expression: str) -> str:
    """``expression`` with each ``file:NAME`` pointing into the server's vectors folder. A
    request names a vector; it never gives the server a path to read."""
    terms = []
    for term in parse(expression).terms:
        if term.is_file:
            name = term.path or ""
            if model.vectors is None:
                raise SteeringSpecError(
                    "this server has no vectors folder (actsteer serve --vectors)"
                )
            if "/" in name or "\\" in name or name.startswith("."):
                raise SteeringSpecError(f"file:{name}: name a vector in the server's folder")
            path = model.vectors / (
                name if name.endswith(".safetensors") else f"{name}.safetensors"
            )
            if not path.is_file():
                raise SteeringSpecError(f"file:{name}: no such vector on this server")
            term = dataclasses.replace(term, source=f"file:{path}")
        terms.append(term)
    return Expression(tuple(terms)).canonical()


def compile_spec(model: ServedModel, value: object) -> Compiled:
    """Resolve and combine a request's steering exactly as the local engine does."""
    expression, coeff, positions = parse_spec(value)
    local = server_files(model, expression)
    steerings = resolve.resolve(model, local, coeff=coeff, positions=positions)  # type: ignore[arg-type]
    row, _ = combine.compile_row(steerings, model.fingerprint, model.activation_norms())
    by_positions: dict[str, dict[int, torch.Tensor]] = {}
    for (where, operator), (deltas, _) in row.items():
        if operator != "add" or where == "actadd":
            raise SteeringSpecError(
                f"the vLLM backend steers with plain additions; {operator!r} at {where!r} "
                "positions is only available in-process"
            )
        by_positions[where] = dict(deltas)
    prompt = _sum(by_positions.get("all", {}), by_positions.get("prompt", {}))
    generated = _sum(by_positions.get("all", {}), by_positions.get("generated", {}))
    return Compiled(json.dumps([expression, coeff, positions]), prompt, generated)


def _sum(a: Mapping[int, torch.Tensor], b: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = dict(a)
    for layer, d in b.items():
        out[layer] = out[layer] + d if layer in out else d
    return out
