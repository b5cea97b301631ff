"""actsteer: steering vectors for local Hugging Face models, per call and per batch row.

>>> from actsteer import SteeredModel, Steering
>>> sm = SteeredModel.default()
>>> love = sm.extract_actadd("Love", "Hate", layers=[6])  # doctest: +SKIP
"""

from .errors import (
    ActsteerError,
    CoefficientError,
    DefaultModelError,
    GenerationError,
    LayerError,
    ModelMismatchError,
    NonFiniteError,
    SteeringSpecError,
    UnknownArchitectureError,
    VectorFileError,
    VectorShapeError,
)
from .generation import Generation
from .model import SteeredModel
from .spec import Steering, Term
from .vector import ModelFingerprint, SteeringVector, VectorMeta

__all__ = [
    "ActsteerError",
    "CoefficientError",
    "DefaultModelError",
    "Generation",
    "GenerationError",
    "LayerError",
    "ModelFingerprint",
    "ModelMismatchError",
    "NonFiniteError",
    "SteeredModel",
    "Steering",
    "SteeringSpecError",
    "SteeringVector",
    "Term",
    "UnknownArchitectureError",
    "VectorFileError",
    "VectorMeta",
    "VectorShapeError",
]
__version__ = "0.1.0"
