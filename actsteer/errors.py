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


class ModelLoadError(ActsteerError, OSError):
    """A model that cannot load: no such directory or Hub id, a Hub id not cached while
    ``HF_HUB_OFFLINE`` is set, or model kwargs transformers refuses (``dtype``, ``device_map``)."""


class PromptError(ActsteerError, ValueError):
    """A prompt cannot be sent: no messages, or text that encodes to no tokens."""


class ContextWindowError(PromptError):
    """A prompt, with the tokens asked for after it, does not fit the model's context window."""


class GenerationError(ActsteerError, RuntimeError):
    """Generation failed or timed out in a worker thread."""


class DistillationError(ActsteerError, RuntimeError):
    """Distillation produced no vector: its loss diverged, or it was cancelled."""


class PresetNotPreparedError(SteeringSpecError):
    """A preset has no vector for this model yet, and where it was asked for cannot make one
    (a server's front end): prepare it first (``actsteer serve`` does, or ``presets.build``)."""


class ExpressionError(SteeringSpecError):
    """A steering expression does not parse; ``position`` indexes the bad character of ``text``."""

    def __init__(self, text: str, position: int, reason: str) -> None:
        self.text, self.position, self.reason = text, position, reason
        head = f"cannot parse steering expression: {reason} at position {position}"
        super().__init__(f"{head}\n{_caret(text, position)}")

    def __reduce__(self):  # pickles (e.g. across worker processes) despite the custom __init__
        return (type(self), (self.text, self.position, self.reason))


class OptionsError(ActsteerError, ValueError):
    """A generation option (``max_new_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``)
    is invalid."""


class ConstraintError(ActsteerError, ValueError):
    """A decoding constraint (JSON schema, regex, grammar) is invalid or uses a feature the
    grammar engine (xgrammar) does not support."""


class ToolSpecError(ActsteerError, ValueError):
    """A tool definition or ``tool_choice`` is invalid: an unserialisable signature, a bad name,
    a parameters schema that cannot be compiled, a choice naming no bound tool."""


def _caret(text: str, pos: int) -> str:
    lo, hi = max(0, pos - 40), min(len(text), pos + 40)
    shown = "".join(c if c.isprintable() else " " for c in text[lo:hi])
    left, right = ("..." if lo else ""), ("..." if hi < len(text) else "")
    return f"  {left}{shown}{right}\n  {' ' * (len(left) + pos - lo)}^"
