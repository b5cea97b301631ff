"""Grammar-constrained decoding: ``Constraint`` values (JSON schema, JSON object, regex, EBNF,
structural tags for tool calls), compiled with xgrammar and applied per batch row in process
(``decode``), or sent to a vLLM server as its own structured outputs (``Constraint.wire``)."""

from .spec import Constraint

__all__ = ["Constraint"]
