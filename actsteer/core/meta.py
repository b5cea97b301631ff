"""Metadata a vector carries: the ``ModelFingerprint`` of the model it was made on (directions
only transfer within one model) and ``VectorMeta`` (method, source, per-layer norms, recommended
layers and coefficient), both frozen values that read and write the file header's JSON."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelMismatchError, SteeringSpecError


@dataclass(frozen=True)
class ModelFingerprint:
    """What identifies the model a vector was made on: directions only transfer within one model."""

    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    revision: str | None = None
    chat_template_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "revision": self.revision,
            "chat_template_hash": self.chat_template_hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelFingerprint:
        try:
            return cls(
                name=str(data["name"]),
                architecture=str(data["architecture"]),
                hidden_size=int(data["hidden_size"]),
                num_layers=int(data["num_layers"]),
                revision=None if data.get("revision") is None else str(data["revision"]),
                chat_template_hash=(
                    None
                    if data.get("chat_template_hash") is None
                    else str(data["chat_template_hash"])
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SteeringSpecError(f"invalid model fingerprint {dict(data)!r}: {exc}") from exc

    def difference(self, other: ModelFingerprint) -> str | None:
        """Why ``other`` is a different model, or None when vectors transfer between the two.

        Names are compared by their last path component, so a hub id and a local copy of the same
        checkpoint ("org/Model" vs "/models/Model") match.
        """
        for attr in ("architecture", "hidden_size", "num_layers"):
            if getattr(self, attr) != getattr(other, attr):
                return f"{attr} {getattr(self, attr)!r} != {getattr(other, attr)!r}"
        if _short_name(self.name) != _short_name(other.name):
            return f"name {self.name!r} != {other.name!r}"
        return None


def _short_name(name: str) -> str:
    return name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()


@dataclass(frozen=True)
class VectorMeta:
    """Where a vector came from and how to use it; every field is optional."""

    model: ModelFingerprint | None = None
    method: str | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    layer_norms: Mapping[int, float] = field(default_factory=dict)
    recommended_layers: tuple[int, ...] | None = None
    recommended_coeff: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a file's norms scale relative steering: a negative one would flip the direction
        for layer, norm in self.layer_norms.items():
            if isinstance(norm, bool) or not (
                isinstance(norm, numbers.Real) and math.isfinite(norm) and norm > 0
            ):
                raise SteeringSpecError(
                    f"invalid vector metadata: layer {layer}'s norm must be a finite number "
                    f"> 0, got {norm!r}"
                )
        coeff = self.recommended_coeff
        if coeff is not None and not (isinstance(coeff, numbers.Real) and math.isfinite(coeff)):
            raise SteeringSpecError(
                f"invalid vector metadata: recommended_coeff must be finite, got {coeff!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": None if self.model is None else self.model.to_dict(),
            "method": self.method,
            "source": dict(self.source),
            "layer_norms": {str(k): float(v) for k, v in sorted(self.layer_norms.items())},
            "recommended_layers": (
                None if self.recommended_layers is None else list(self.recommended_layers)
            ),
            "recommended_coeff": self.recommended_coeff,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VectorMeta:
        try:
            model = data.get("model")
            rec_layers = data.get("recommended_layers")
            rec_coeff = data.get("recommended_coeff")
            return cls(
                model=None if model is None else ModelFingerprint.from_dict(model),
                method=None if data.get("method") is None else str(data["method"]),
                source=dict(data.get("source") or {}),
                layer_norms={int(k): float(v) for k, v in (data.get("layer_norms") or {}).items()},
                recommended_layers=None
                if rec_layers is None
                else tuple(int(x) for x in rec_layers),
                recommended_coeff=None if rec_coeff is None else float(rec_coeff),
                extra=dict(data.get("extra") or {}),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise SteeringSpecError(f"invalid vector metadata: {exc}") from exc


def merge_meta(a: VectorMeta, b: VectorMeta, method: str) -> VectorMeta:
    if a.model is not None and b.model is not None:
        why = a.model.difference(b.model)
        if why is not None:
            raise ModelMismatchError(
                f"cannot combine vectors made on different models ({why}); "
                "re-extract one of them on the other model"
            )
    norms = dict(b.layer_norms)
    norms.update(a.layer_norms)
    return VectorMeta(model=a.model or b.model, method=method, layer_norms=norms)


def arch_name(architecture: str) -> str:
    """A Hugging Face architecture class as the short name llama.cpp's ``cvector-generator``
    and repeng write as ``controlvector.model_hint``: ``LlamaForCausalLM`` -> ``llama``."""
    for suffix in ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "Model"):
        if architecture.endswith(suffix) and architecture != suffix:
            return architecture[: -len(suffix)].lower()
    return architecture.lower()
