"""actsteer: steering vectors for local Hugging Face models, per call and per batch row.

>>> from actsteer import SteeredModel, Steering, extract
>>> sm = SteeredModel.default()  # doctest: +SKIP
>>> love = extract.actadd(sm, "Love", "Hate", layers=[6])  # doctest: +SKIP
>>> sm.generate("I think my neighbour is", Steering(love, 4.0))  # doctest: +SKIP
>>> french = extract.distill(sm, "Always answer in French.")  # doctest: +SKIP
"""

from .call_options import CallOptions
from .core.steering import Steering, Term
from .core.vector import ModelFingerprint, SteeringVector, VectorMeta
from .engine import Engine, Generation, GenerationOptions, Request
from .errors import (
    ActsteerError,
    CoefficientError,
    ContextWindowError,
    DefaultModelError,
    DistillationError,
    ExpressionError,
    GenerationError,
    LayerError,
    ModelLoadError,
    ModelMismatchError,
    NonFiniteError,
    OptionsError,
    PresetNotPreparedError,
    PromptError,
    SteeringSpecError,
    UnknownArchitectureError,
    VectorFileError,
    VectorShapeError,
)
from .runtime.model import SteeredModel
from .train import extract

__all__ = [
    "ActsteerError",
    "CallOptions",
    "CoefficientError",
    "ContextWindowError",
    "DefaultModelError",
    "DistillationError",
    "Engine",
    "ExpressionError",
    "Generation",
    "GenerationError",
    "GenerationOptions",
    "LayerError",
    "ModelFingerprint",
    "ModelLoadError",
    "ModelMismatchError",
    "NonFiniteError",
    "OptionsError",
    "PresetNotPreparedError",
    "PromptError",
    "Request",
    "SteeredModel",
    "Steering",
    "SteeringSpecError",
    "SteeringVector",
    "Term",
    "UnknownArchitectureError",
    "VectorFileError",
    "VectorMeta",
    "VectorShapeError",
    "extract",
]
__version__ = "0.1.0"
