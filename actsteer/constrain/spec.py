"""``Constraint``: what a reply must look like, as a value checked once where it is made.

A constraint is a JSON schema, "any JSON object", a regular expression, an EBNF grammar or an
xgrammar structural tag (tool calls). It is checked when it is built, by compiling it with
xgrammar (the grammar engine vLLM uses), so a bad schema fails at ``with_structured_output`` or
``bind_tools`` time, not in the middle of a batch. The same value travels to a vLLM server as its
``structured_outputs`` request field (``wire``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConstraintError

Kind = Literal["json_schema", "json_object", "regex", "grammar", "structural_tag"]
KINDS: tuple[str, ...] = ("json_schema", "json_object", "regex", "grammar", "structural_tag")

#: JSON schemas are compiled compact (``{"a": 1, "b": 2}``): with free whitespace between
#: tokens a small model can emit newlines until ``max_new_tokens``, never closing the object.
COMPACT = True


@dataclass(frozen=True)
class Constraint:
    """A grammar the generated tokens must follow (``source`` is canonical text: the schema as
    sorted JSON, the regex, the EBNF, the structural tag as JSON)."""

    kind: Kind
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConstraintError(f"unknown constraint kind {self.kind!r}; one of {KINDS}")
        if not isinstance(self.source, str):
            raise ConstraintError(f"a constraint's source is text, got {type(self.source)}")
        _checked(self.kind, self.source)

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str) -> Constraint:
        """Replies that are one JSON value valid under ``schema`` (a dict or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise ConstraintError(f"the JSON schema is not valid JSON: {exc}") from None
        if not isinstance(schema, Mapping):
            raise ConstraintError(f"a JSON schema is a JSON object, got {type(schema).__name__}")
        try:
            source = json.dumps(schema)
        except (TypeError, ValueError) as exc:
            raise ConstraintError(f"the JSON schema cannot be serialised: {exc}") from None
        return cls("json_schema", source)

    @classmethod
    def json_object(cls) -> Constraint:
        """Replies that are one JSON object, any keys (OpenAI's ``json_object`` mode)."""
        return cls("json_object", "")

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """Replies that match ``pattern`` whole."""
        return cls("regex", pattern)

    @classmethod
    def grammar(cls, ebnf: str) -> Constraint:
        """Replies derived from the EBNF grammar's ``root`` rule (xgrammar / GBNF syntax)."""
        return cls("grammar", ebnf)

    @classmethod
    def structural_tag(cls, tag: Mapping[str, Any]) -> Constraint:
        """An xgrammar structural tag: free text with tagged, schema-checked parts (tool calls)."""
        return cls("structural_tag", json.dumps(tag))

    @classmethod
    def of(cls, value: Any) -> Constraint | None:
        """A ``Constraint`` from what users pass: a ``Constraint``, None, a JSON schema dict, or
        OpenAI's ``response_format`` (``{"type": "json_schema", "json_schema": {"schema": ...}}``
        or ``{"type": "json_object"}``)."""
        if value is None or isinstance(value, Constraint):
            return value
        if isinstance(value, Mapping):
            kind = value.get("type")
            if kind == "json_object":
                return cls.json_object()
            if kind == "json_schema" and isinstance(value.get("json_schema"), Mapping):
                inner = value["json_schema"]
                return cls.json_schema(inner.get("schema", inner))
            if kind == "text":
                return None
            return cls.json_schema(value)
        raise ConstraintError(
            f"cannot use {type(value).__name__} as a constraint: pass a Constraint, a JSON schema "
            "dict or an OpenAI response_format"
        )

    # -- views ----------------------------------------------------------------------------------
    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema of a ``json_schema`` constraint."""
        return json.loads(self.source) if self.kind == "json_schema" else None

    def wire(self) -> dict[str, Any]:
        """vLLM's ``structured_outputs`` request field for this constraint. A JSON schema goes
        as the EBNF grammar xgrammar compiles from it here: vLLM compiles ``{"json": ...}`` with
        its own server-wide whitespace setting, and the same grammar on both sides is what makes
        a server's greedy reply equal the in-process one."""
        if self.kind in ("json_schema", "json_object"):
            return {"grammar": str(to_grammar(self.kind, self.source))}
        if self.kind == "structural_tag":
            return {"structural_tag": self.source}
        return {self.kind: self.source}

    def describe(self) -> str:
        """A short label for traces and errors."""
        text = self.source if len(self.source) <= 60 else self.source[:57] + "..."
        return self.kind if not text else f"{self.kind}:{text}"


def to_grammar(kind: str, source: str) -> Any:
    """The xgrammar ``Grammar`` of a constraint (raises xgrammar's own errors)."""
    import xgrammar as xgr

    if kind == "json_schema":
        return xgr.Grammar.from_json_schema(source, any_whitespace=not COMPACT)
    if kind == "json_object":
        return xgr.Grammar.from_json_schema('{"type": "object"}', any_whitespace=not COMPACT)
    if kind == "regex":
        return xgr.Grammar.from_regex(source)
    if kind == "grammar":
        return xgr.Grammar.from_ebnf(source)
    return xgr.Grammar.from_structural_tag(source)


@functools.lru_cache(maxsize=512)
def _checked(kind: str, source: str) -> None:
    """Compile once to check (memoised: the same schema bound twice is checked once)."""
    if kind in ("regex", "grammar", "structural_tag") and not source:
        raise ConstraintError(f"an empty {kind} constrains nothing")
    try:
        to_grammar(kind, source)
    except Exception as exc:  # xgrammar raises RuntimeError / ValueError / its own types
        lines = str(exc).strip().splitlines()
        reason = re.sub(r"^\[[\d:]+\] \S+: ", "", lines[0]) if lines else type(exc).__name__
        raise ConstraintError(f"invalid {kind} constraint: {reason}") from None
