"""The catalogue of built-in behaviours: one JSON file each, read into ``Preset`` values.

A preset names a method and its inputs (pairs or a system prompt), default layers as fractions of
depth (so it transfers across model sizes), a default coefficient and the id of the behaviour
check that evaluates it. This package only describes presets. Reading a prepared vector is
``actsteer.sources.prepared`` (the shipped vectors in ``vectors/`` and actsteer's cache, keyed by
the model fingerprint and the preset's content hash; never trains); making one is
``actsteer.train.prepare``. Distilled presets (``"method": "distill"``, see
``actsteer.train.distill``) take minutes to train, so their vectors for the embedded model ship
(rebuilt by ``python -m actsteer.presets.build``); any other model distills them once on first
use in-process, with a notice and a progress bar, and caches them like the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

from ..errors import SteeringSpecError

_FIELDS = {
    "name",
    "instruction",
    "description",
    "method",
    "pairs",
    "system_prompt",
    "inputs",
    "read",
    "layers",
    "coeff",
    "scale",
    "positions",
    "check",
    "distill",
}

#: Where the distilled presets' vectors for the embedded model ship.
SHIPPED = "vectors"


@dataclass(frozen=True)
class Preset:
    """A built-in behaviour: how to extract its vector and how to apply it by default."""

    name: str
    description: str
    method: Literal["mean_diff", "pca", "prompt_template", "distill"]
    layers: tuple[float, float] | None
    """Default layers as fractions of depth; None (distilled presets): every layer but 0."""
    coeff: float
    check: str
    scale: Literal["relative", "raw"] = "raw"
    positions: str = "all"
    read: str | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    system_prompt: str | None = None
    inputs: tuple[str, ...] | None = None
    instruction: str | None = None
    distill: tuple[tuple[str, Any], ...] = ()
    """Training settings passed to ``extract.distill`` (steps, lr, ...), as sorted pairs."""

    @property
    def prompt_equivalent(self) -> str | None:
        """The system prompt this behaviour is compared against in evaluations."""
        return self.system_prompt or self.instruction

    @property
    def content_hash(self) -> str:
        """Hash of everything that determines the extracted vector."""
        from ..data import neutral_inputs

        inputs = self.inputs
        if inputs is None and self.method in ("prompt_template", "distill"):
            inputs = tuple(neutral_inputs("train"))  # the shipped default inputs
        parts: list[Any] = [self.method, self.read, self.pairs, self.system_prompt, inputs]
        if self.method == "distill":  # what else determines a distilled vector
            from ..core.distill_config import config

            settings = dataclasses.asdict(config(**dict(self.distill)))  # with the defaults
            parts += [self.positions, settings, tuple(neutral_inputs("heldout"))]
        blob = json.dumps(parts, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def layer_indices(self, num_layers: int) -> list[int]:
        """The default layers on a model of ``num_layers`` decoder blocks."""
        if self.layers is None:
            return list(range(1, num_layers)) or [0]
        lo, hi = (round(f * (num_layers - 1)) for f in self.layers)
        return list(range(max(0, lo), min(num_layers - 1, hi) + 1))


def _parse(name: str, data: dict[str, Any]) -> Preset:
    unknown = set(data) - _FIELDS
    if unknown:
        raise SteeringSpecError(f"preset {name!r}: unknown fields {sorted(unknown)}")
    try:
        return Preset(
            name=data["name"],
            description=data["description"],
            method=data["method"],
            layers=(
                (float(data["layers"][0]), float(data["layers"][1]))
                if data.get("layers") is not None
                else None
            ),
            coeff=float(data["coeff"]),
            check=data["check"],
            scale=data.get("scale", "raw"),
            positions=data.get("positions", "all"),
            read=data.get("read"),
            pairs=tuple((str(p), str(n)) for p, n in data.get("pairs", ())),
            system_prompt=data.get("system_prompt"),
            inputs=_inputs(name, data.get("inputs")),
            instruction=data.get("instruction"),
            distill=tuple(sorted((data.get("distill") or {}).items())),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SteeringSpecError(f"preset {name!r} is malformed: {exc}") from exc


def _inputs(name: str, value: object) -> tuple[str, ...] | None:
    """A preset's inputs: listed, or named as a shipped set (``"personal_questions:train"``)."""
    if not value:
        return None
    if isinstance(value, str):
        from ..data import INPUT_SETS

        if value not in INPUT_SETS:
            raise SteeringSpecError(
                f"preset {name!r}: unknown input set {value!r}; use {sorted(INPUT_SETS)}"
            )
        return tuple(INPUT_SETS[value]())
    return tuple(str(x) for x in value)  # type: ignore[union-attr]


@cache
def _all() -> dict[str, Preset]:
    out = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            preset = _parse(entry.name, json.loads(entry.read_text(encoding="utf-8")))
            out[preset.name] = preset
    return out


def list_presets() -> list[Preset]:
    """Every built-in preset, sorted by name."""
    return list(_all().values())


def names() -> list[str]:
    return sorted(_all())


def get(name: str) -> Preset:
    """The preset called ``name``; an unknown name gets a "did you mean" hint."""
    presets = _all()
    if name in presets:
        return presets[name]
    from ..core.expressions import suggest

    hint = suggest(name, presets)
    raise SteeringSpecError(
        f"unknown preset {name!r}"
        + (f"; did you mean {hint!r}?" if hint else "")
        + f" (presets: {', '.join(sorted(presets))})"
    )
