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
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import resolve
from ..apply import combine, hooks
from ..core.expressions import Expression, parse
from ..core.vector import ModelFingerprint, SteeringVector
from ..core.wire import json_steerings
from ..errors import SteeringSpecError
from ..sources import prepared, read_file

BUNDLE_ENV = "ACTSTEER_SERVE_BUNDLE"
#: The per-request key in ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP).
XARG = "actsteer"


class ServedModel:
    """The server front end's ``VectorSource``: the model's fingerprint, layer count and norms
    from the serve bundle. It reads prepared preset vectors only: a preset with none is
    ``PresetNotPreparedError``, an HTTP 400 (extraction needs the Hugging Face model, which is
    not in the front end)."""

    def __init__(
        self,
        fingerprint: ModelFingerprint,
        norms: Mapping[int, float],
        vectors: str | None = None,
    ) -> None:
        self.fingerprint = fingerprint
        self._norms = {int(k): float(v) for k, v in norms.items()}
        self.vectors = Path(vectors) if vectors else None
        self._files: dict[str, SteeringVector] = {}

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

    def vector(self, name: str, layers: Sequence[int] | None = None) -> SteeringVector:
        """A preset's vector, read from what ``actsteer serve`` prepared; never trained here."""
        return prepared.ready(
            self, name, layers, lambda preset: prepared.read_vector(self.fingerprint, preset)
        )

    def file(self, path: str) -> SteeringVector:
        """A ``file:`` vector, read once and kept for the server's life: the front end's check
        and the model runner (which may compile a steering again after evicting it) then use the
        same vector, and a file changed or removed later cannot fail a step (a changed vector
        needs a new name or a restart)."""
        if path not in self._files:
            self._files[path] = read_file(path, self.fingerprint)
        return self._files[path]

    def has_file(self, path: str) -> bool:
        return path in self._files or Path(path).is_file()


@dataclass(frozen=True)
class ServedSteering:
    """A request's steering. Plain additions are two delta sets, for its prompt tokens and its
    generated ones (the runner's fast path: one table row per token); anything else (ablation,
    norm-preserving addition, ActAdd positions) is the local hooks' one-row ``plan``, which the
    runner applies with their own operators (built here, so the front end's check covers it)."""

    key: str
    prompt: dict[int, torch.Tensor]
    generated: dict[int, torch.Tensor]
    plan: hooks.Plan | None = None
    #: Steers prompt and generated tokens differently (positions other than "all"): a token's
    #: KV depends on the prompt's length, which the prefix-cache salt must then include.
    positional: bool = False

    @property
    def layers(self) -> set[int]:
        if self.plan is not None:
            return set(self.plan.layers)
        return {*self.prompt, *self.generated}


def parse_spec(value: object) -> list[dict[str, Any]]:
    """``extra_args["actsteer"]``: an expression (``"json:4 - formal"``), a JSON object of
    ``Steering`` fields (``{"expression": "refusal", "operator": "ablate"}``, see
    ``actsteer.core.wire.SPEC_FIELDS``) or a JSON list of them, as the steerings of one call.
    Returns each as a mapping with its expression in canonical form."""
    if not isinstance(value, str) or not value.strip():
        raise SteeringSpecError(f"{XARG} must be a steering expression or JSON")
    text = value.strip()
    if text[0] not in "{[":
        return [{"expression": parse(text).canonical()}]
    out = []
    for expression, options in json_steerings(text):
        canonical = {"expression": parse(expression).canonical(), **options}
        out.append({k: list(v) if isinstance(v, tuple) else v for k, v in canonical.items()})
    return out


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
            if not model.has_file(str(path)):
                raise SteeringSpecError(f"file:{name}: no such vector on this server")
            term = dataclasses.replace(term, source=f"file:{path}")
        terms.append(term)
    return Expression(tuple(terms)).canonical()


def compile_spec(model: ServedModel, value: object) -> ServedSteering:
    """Resolve and combine a request's steering exactly as the local engine does."""
    specs = parse_spec(value)
    steerings = [
        s
        for spec in specs
        for s in resolve.resolve(
            model,
            {**spec, "expression": server_files(model, spec["expression"])},
        )
    ]
    row, _ = combine.compile_row(steerings, model.fingerprint, model.activation_norms())
    key = json.dumps(specs, sort_keys=True)
    positional = any(where != "all" for where, _ in row)
    if any(operator != "add" or where == "actadd" for where, operator in row):
        plan = hooks.Plan.build([row], starts=torch.zeros(1, dtype=torch.long))
        return ServedSteering(key, {}, {}, plan, positional)
    by_positions = {where: dict(deltas) for (where, _), (deltas, _) in row.items()}
    prompt = _sum(by_positions.get("all", {}), by_positions.get("prompt", {}))
    generated = _sum(by_positions.get("all", {}), by_positions.get("generated", {}))
    return ServedSteering(key, prompt, generated, None, positional)


def _sum(a: Mapping[int, torch.Tensor], b: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = dict(a)
    for layer, d in b.items():
        out[layer] = out[layer] + d if layer in out else d
    return out
