"""Tools as values: ``ToolSpec`` (a function the model may call, OpenAI's shape), the normalised
``tool_choice``, and the ``ToolCall`` / ``InvalidToolCall`` values a reply is parsed into.

Everything is checked where it is made (``bind_tools`` time): a tool's name, that its
parameters are a JSON object schema xgrammar can compile (so a forced call can be constrained),
and that a forced ``tool_choice`` names a bound tool.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..constrain.spec import Constraint
from ..errors import ConstraintError, ToolSpecError

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
#: The choices that are not a tool's name, after ``tool_choice`` normalises its aliases.
CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class ToolSpec:
    """One callable tool: its name, what it does, and its parameters as a JSON schema (kept as
    canonical JSON text, so specs compare and hash by content)."""

    name: str
    description: str = ""
    parameters_json: str = '{"type": "object", "properties": {}}'

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ToolSpecError(
                f"a tool name is 1-64 letters, digits, '_', '.' or '-', got {self.name!r}"
            )
        params = self.parameters
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise ToolSpecError(f"tool {self.name!r}: parameters must be a JSON object schema")
        try:
            Constraint.json_schema(params)
        except ConstraintError as exc:
            raise ToolSpecError(f"tool {self.name!r}: {exc}") from None

    @property
    def parameters(self) -> dict[str, Any]:
        return json.loads(self.parameters_json)

    @classmethod
    def of(cls, value: Any) -> ToolSpec:
        """A spec from OpenAI's tool dict (``{"type": "function", "function": {...}}``), its
        inner function dict, or a ``ToolSpec``."""
        if isinstance(value, ToolSpec):
            return value
        if not isinstance(value, Mapping):
            raise ToolSpecError(f"a tool is a dict in OpenAI's format, got {type(value).__name__}")
        fn = value.get("function", value) if value.get("type", "function") == "function" else None
        if not isinstance(fn, Mapping) or "name" not in fn:
            raise ToolSpecError(f"a tool needs a function name, got {dict(value)!r}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        try:
            text = json.dumps(params)
        except (TypeError, ValueError) as exc:
            raise ToolSpecError(f"tool {fn['name']!r}: parameters are not JSON: {exc}") from None
        return cls(str(fn["name"]), str(fn.get("description") or ""), text)

    def openai(self) -> dict[str, Any]:
        """OpenAI's tool dict, as chat templates (``tools=``) and vLLM take it."""
        function = {"name": self.name, "description": self.description}
        return {"type": "function", "function": {**function, "parameters": self.parameters}}


def tool_specs(tools: Sequence[Any] | None) -> tuple[ToolSpec, ...]:
    """Checked specs, names unique."""
    specs = tuple(ToolSpec.of(t) for t in tools or ())
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ToolSpecError(f"two tools share the name {dup[0]!r}")
    return specs


def tool_choice(value: Any, tools: Sequence[ToolSpec]) -> str:
    """``"auto"``, ``"none"``, ``"required"`` or a bound tool's name, from LangChain's and
    OpenAI's spellings: None/"auto", False/"none", True/"any"/"required", a name, or
    ``{"type": "function", "function": {"name": ...}}``."""
    if value is None or value == "auto":
        return "auto"
    if value is False or value == "none":
        return "none"
    if value is True or value in ("any", "required"):
        if not tools:
            raise ToolSpecError(f"tool_choice={value!r} needs at least one bound tool")
        return "required"
    if isinstance(value, Mapping):
        value = (value.get("function") or {}).get("name", value.get("name"))
    if isinstance(value, str):
        names = [t.name for t in tools]
        if value not in names:
            raise ToolSpecError(f"tool_choice names {value!r}, which is not a bound tool {names}")
        return value
    raise ToolSpecError(f"cannot read tool_choice {value!r}")


def new_call_id() -> str:
    """An id for a parsed call (LangChain pairs each ``ToolMessage`` with its call by id)."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class ToolCall:
    """A well-formed call of a bound tool."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)
    id: str = field(default_factory=new_call_id)


@dataclass(frozen=True)
class InvalidToolCall:
    """A call that could not be used: unparseable arguments, an unknown tool, a cut-off call."""

    name: str | None
    arguments: str
    error: str
    id: str = field(default_factory=new_call_id)
