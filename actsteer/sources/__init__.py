"""Where a steering's named vectors come from. ``resolve`` asks a ``VectorSource`` (the model it
steers) for a preset's vector or a ``file:`` vector and knows nothing else of it: the in-process
``SteeredModel`` prepares a preset on its first use (``actsteer.train``), a server's front end
(``actsteer.vllm.served.ServedModel``) only reads what ``actsteer serve`` prepared and refuses the
rest. Both read prepared vectors through ``actsteer.sources.prepared``, which never trains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..core.meta import ModelFingerprint
from ..core.vector import SteeringVector


@runtime_checkable
class VectorSource(Protocol):
    """What resolving a steering needs of a model: its identity, depth and typical activation
    norms, and the vectors that steering names."""

    fingerprint: ModelFingerprint

    @property
    def num_layers(self) -> int: ...

    def activation_norms(self) -> dict[int, float]:
        """Each layer's typical hidden-state norm (what ``relative`` steering scales by)."""
        ...

    def vector(self, name: str, layers: Sequence[int] | None = None) -> SteeringVector:
        """Preset ``name``'s vector on its default layers (or ``layers``), scaled so that
        coefficient 1 is its default strength; ``PresetNotPreparedError`` where this source
        cannot prepare one."""
        ...

    def file(self, path: str) -> SteeringVector:
        """The vector of a ``file:`` term, checked against this model."""
        ...


def read_file(path: str, model: ModelFingerprint) -> SteeringVector:
    """A ``file:`` term's vector: GGUF by extension, else actsteer's safetensors format."""
    if path.lower().endswith(".gguf"):
        return SteeringVector.from_gguf(path)
    return SteeringVector.load(path, model=model)
