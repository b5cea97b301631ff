"""The one exception hierarchy of actsteer: every error the library raises on purpose is an
``ActsteerError``, and each subclass names one kind of mistake so callers can catch exactly it."""

from __future__ import annotations


class ActsteerError(Exception):
    """Base class of every error actsteer raises on purpose."""


class VectorShapeError(ActsteerError, ValueError):
    """A direction has the wrong shape or hidden size for the model it is applied to."""


class LayerError(ActsteerError, ValueError):
    """A layer index is outside the model's decoder layers."""


class NonFiniteError(ActsteerError, ValueError):
    """A direction or coefficient holds NaN or infinity."""


class CoefficientError(ActsteerError, ValueError):
    """A coefficient is absurd: so large it would swamp the layer's activations."""


class ModelMismatchError(ActsteerError, ValueError):
    """A vector's recorded model fingerprint names a different model."""


class VectorFileError(ActsteerError, ValueError):
    """A vector file is missing, truncated, corrupt, hostile or of an unknown format."""


class SteeringSpecError(ActsteerError, ValueError):
    """A steering specification (positions, operator, terms, expression) is invalid."""


class UnknownArchitectureError(ActsteerError, ValueError):
    """actsteer cannot find the decoder layers of this model on its own."""


class DefaultModelError(ActsteerError, RuntimeError):
    """The embedded default model is not installed or its cache cannot be built."""


class GenerationError(ActsteerError, RuntimeError):
    """Generation failed or timed out in a worker thread."""


class DistillationError(ActsteerError, RuntimeError):
    """Distillation produced no vector: its loss diverged, or it was cancelled."""
