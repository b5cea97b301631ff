"""SteeringVector: per-layer directions plus metadata, as a frozen value with algebra and file I/O.

A vector maps 0-based decoder-layer indices (Hugging Face ``layers[N]``, llama.cpp ``direction.N``)
to a direction in that layer's output hidden state. Values are immutable: every operation returns
a new vector, so one loaded vector can be shared by any number of concurrent calls.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import torch

from ..errors import ModelMismatchError, NonFiniteError, SteeringSpecError, VectorShapeError
from .labels import layer_span
from .meta import ModelFingerprint, VectorMeta, arch_name, merge_meta


class SteeringVector:
    """Per-layer steering directions with metadata; supports ``+``, ``-``, ``*``, ``/``.

    ``SteeringVector({8: t8, 9: t9})`` holds 1-D float tensors of the model's hidden size (or
    2-D ``(positions, hidden)`` tensors for the per-position ActAdd variant). Tensors are copied
    to float32 on the CPU; the mapping is read-only.
    """

    __slots__ = ("_directions", "_meta")

    def __init__(
        self,
        directions: Mapping[int, torch.Tensor],
        meta: VectorMeta | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(directions, Mapping) or not directions:
            raise VectorShapeError("a SteeringVector needs a non-empty {layer: tensor} mapping")
        clean: dict[int, torch.Tensor] = {}
        hidden = None
        for layer, tensor in sorted(directions.items(), key=lambda kv: _layer_key(kv[0])):
            layer = _layer_key(layer)
            tensor = _check_tensor(layer, tensor)
            if hidden is not None and tensor.shape[-1] != hidden:
                raise VectorShapeError(
                    f"layer {layer} has hidden size {tensor.shape[-1]}, other layers {hidden}"
                )
            hidden = tensor.shape[-1]
            clean[layer] = tensor
        if meta is None:
            meta = VectorMeta()
        elif not isinstance(meta, VectorMeta):
            meta = VectorMeta.from_dict(meta)
        if meta.model is not None and meta.model.hidden_size != hidden:
            raise VectorShapeError(
                f"directions have hidden size {hidden} but the recorded model "
                f"{meta.model.name!r} has {meta.model.hidden_size}"
            )
        object.__setattr__(self, "_directions", MappingProxyType(clean))
        object.__setattr__(self, "_meta", meta)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SteeringVector is immutable")

    # -- accessors ------------------------------------------------------------------------------
    @property
    def directions(self) -> Mapping[int, torch.Tensor]:
        """Read-only ``{layer: float32 tensor}``; do not modify the tensors in place."""
        return self._directions

    @property
    def meta(self) -> VectorMeta:
        return self._meta

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self._directions)

    @property
    def hidden_size(self) -> int:
        return next(iter(self._directions.values())).shape[-1]

    @property
    def is_positional(self) -> bool:
        """True for the per-position ActAdd form (2-D directions)."""
        return any(t.ndim == 2 for t in self._directions.values())

    def norms(self) -> dict[int, float]:
        return {layer: float(t.norm()) for layer, t in self._directions.items()}

    def digest(self) -> str:
        """A short content hash of the directions, for traces and cache keys."""
        h = hashlib.sha256()
        for layer, t in self._directions.items():
            h.update(f"{layer}:{tuple(t.shape)};".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def with_meta(self, **changes: Any) -> SteeringVector:
        """A copy with some metadata fields replaced (e.g. ``model=None`` to make it portable)."""
        return SteeringVector(self._directions, replace(self._meta, **changes))

    # -- algebra --------------------------------------------------------------------------------
    def select(self, layers: Iterable[int]) -> SteeringVector:
        """The same vector restricted to ``layers`` (each must be present)."""
        wanted = [_layer_key(x) for x in layers]
        missing = [x for x in wanted if x not in self._directions]
        if missing:
            raise SteeringSpecError(
                f"vector has no direction for layer(s) {missing}; it has {layer_span(self.layers)}"
            )
        return SteeringVector({x: self._directions[x] for x in wanted}, self._meta)

    def normalized(self) -> SteeringVector:
        """Each layer's direction scaled to unit norm (per position for 2-D directions)."""
        return SteeringVector({k: unit(t) for k, t in self._directions.items()}, self._meta)

    def __add__(self, other: object) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.hidden_size != self.hidden_size:
            raise VectorShapeError(
                f"cannot add vectors of hidden size {self.hidden_size} and {other.hidden_size}"
            )
        out = dict(self._directions)
        for layer, t in other.directions.items():
            if layer in out and out[layer].ndim != t.ndim:
                raise SteeringSpecError(
                    f"layer {layer}: cannot add a per-position (ActAdd) direction to a plain one"
                )
            out[layer] = add_aligned(out[layer], t) if layer in out else t
        return SteeringVector(out, merge_meta(self._meta, other.meta, "combination"))

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __sub__(self, other: object) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self + (-other)

    def __mul__(self, coeff: object) -> SteeringVector:
        if isinstance(coeff, bool) or not isinstance(coeff, int | float):
            return NotImplemented
        coeff = float(coeff)
        if not math.isfinite(coeff):
            raise NonFiniteError(f"cannot scale a vector by {coeff}")
        return SteeringVector(
            {layer: t * coeff for layer, t in self._directions.items()}, self._meta
        )

    __rmul__ = __mul__

    def __truediv__(self, coeff: object) -> SteeringVector:
        if isinstance(coeff, bool) or not isinstance(coeff, int | float):
            return NotImplemented
        if coeff == 0:
            raise NonFiniteError("cannot divide a vector by zero")
        return self * (1.0 / float(coeff))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return (
            self.layers == other.layers
            and all(torch.equal(self._directions[k], other.directions[k]) for k in self.layers)
            and self._meta == other.meta
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        model = self._meta.model.name if self._meta.model else "any model"
        form = ", per-position" if self.is_positional else ""
        return (
            f"SteeringVector(layers={layer_span(self.layers)}, hidden={self.hidden_size}{form}, "
            f"method={self._meta.method!r}, model={model!r})"
        )

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the native ``.safetensors`` file (JSON metadata in the header; never pickle)."""
        from .formats import write_native

        write_native(path, self._directions, self._meta.to_dict())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model: ModelFingerprint | None = None,
        force: bool = False,
    ) -> SteeringVector:
        """Read a native file; with ``model``, refuse a vector recorded for another model
        unless ``force=True``."""
        from .formats import read_native

        directions, meta = read_native(path)
        vec = cls(directions, meta)
        if model is not None:
            vec.check_model(model, force=force)
        return vec

    def to_gguf(
        self,
        path: str | os.PathLike[str],
        model_hint: str | None = None,
        *,
        keep_layer0: bool = False,
    ) -> None:
        """Write a llama.cpp / repeng control vector (``direction.N`` float32 tensors).

        llama.cpp never steers layer 0 and rejects a file containing ``direction.0``, so layer 0
        is left out (with a warning) unless ``keep_layer0=True`` (repeng reads it).
        """
        from .formats import write_gguf

        if self.is_positional:
            raise SteeringSpecError("per-position (ActAdd) vectors have no GGUF form")
        directions = dict(self._directions)
        if 0 in directions and not keep_layer0:
            warnings.warn(
                "layer 0 left out of the GGUF: llama.cpp never steers it and rejects files that "
                "contain direction.0 (pass keep_layer0=True to write it for repeng)",
                UserWarning,
                stacklevel=2,
            )
            del directions[0]
        if not directions:
            raise SteeringSpecError("nothing to export: the vector only has layer 0")
        hint = model_hint or (arch_name(self._meta.model.architecture) if self._meta.model else "")
        write_gguf(path, directions, hint)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a llama.cpp / repeng control vector; it has no model fingerprint, so it applies
        to any model of its hidden size."""
        from .formats import read_gguf

        directions, meta = read_gguf(path)
        return cls(directions, VectorMeta(method="gguf", extra=meta))

    def check_model(self, model: ModelFingerprint, *, force: bool = False) -> None:
        """Raise if this vector cannot apply to ``model``: hidden size always, identity unless
        ``force``."""
        if self.hidden_size != model.hidden_size:
            raise VectorShapeError(
                f"vector hidden size {self.hidden_size} does not match model {model.name!r} "
                f"hidden size {model.hidden_size}"
            )
        if self._meta.model is not None and not force:
            why = self._meta.model.difference(model)
            if why is not None:
                raise ModelMismatchError(
                    f"vector was made on {self._meta.model.name!r}, not {model.name!r} ({why}); "
                    "pass force=True (or Steering(..., force=True)) to apply it anyway, or "
                    "vector.with_meta(model=None) to make it model-agnostic"
                )


def _layer_key(layer: object) -> int:
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or layer < 0:
        raise SteeringSpecError(f"layer keys must be non-negative ints, got {layer!r}")
    return int(layer)


def _check_tensor(layer: int, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        try:
            tensor = torch.as_tensor(tensor)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise VectorShapeError(f"layer {layer}: not a tensor ({exc})") from exc
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise VectorShapeError(f"layer {layer}: expected a float tensor, got {tensor.dtype}")
    if tensor.ndim not in (1, 2) or tensor.shape[-1] == 0 or tensor.numel() == 0:
        raise VectorShapeError(
            f"layer {layer}: expected shape (hidden,) or (positions, hidden), got "
            f"{tuple(tensor.shape)}"
        )
    out = tensor.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
    if not torch.isfinite(out).all():
        raise NonFiniteError(f"layer {layer}: direction contains NaN or infinity")
    return out


def add_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` for directions of one layer; per-position ``(k, hidden)`` directions of
    different lengths are zero-padded to the longer, a plain ``(hidden,)`` one counts as one
    position."""
    if a.ndim == 2 or b.ndim == 2:
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        n = max(a.shape[0], b.shape[0])
        a = torch.nn.functional.pad(a, (0, 0, 0, n - a.shape[0]))
        b = torch.nn.functional.pad(b, (0, 0, 0, n - b.shape[0]))
    return a + b


def unit(t: torch.Tensor) -> torch.Tensor:
    """``t`` scaled to norm 1 along its last axis (zero rows stay zero)."""
    norm = t.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, t / norm.clamp_min(1e-30), t)
