"""``ChatSteer``'s tool calling and structured output: ``bind_tools`` offers tools through the
model's chat template and forces a chosen call with a grammar; ``with_structured_output``
constrains decoding to the schema (or forces the schema as a tool), so replies always parse."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from actsteer.constrain import Constraint
from actsteer.errors import ToolSpecError
from actsteer.tools import ToolSpec
from actsteer.tools import tool_choice as tool_choice_of


class ToolsAndStructuredOutput:
    """``bind_tools`` and ``with_structured_output`` for a LangChain chat model that passes
    ``tools``/``tool_choice``/``constraint`` call options to the engine (``ChatSteer``)."""

    if TYPE_CHECKING:
        bind: Callable[..., Runnable]
        _convert_input: Callable[[LanguageModelInput], Any]

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model through its chat template (or actsteer's generic tools
        block). ``tool_choice``: None/"auto" (text or calls; calls are always well formed),
        "none", "any"/"required" (only calls), or a tool's name; a forced choice is a grammar,
        so the call parses on any model. Checked here: an unserialisable tool, a parameters
        schema that cannot compile or a choice naming no bound tool raise ``ToolSpecError``."""
        try:
            formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        except Exception as exc:
            raise ToolSpecError(f"cannot turn a tool into a JSON schema: {exc}") from exc
        # each tool and the choice are checked now (two tools of one name are refused when
        # called: LangChain's standard suite binds a pydantic class and its dict schema together)
        tool_choice_of(tool_choice, [ToolSpec.of(t) for t in formatted])
        bound: dict[str, Any] = {"tools": formatted, "tool_choice": tool_choice}
        if parallel_tool_calls is not None:
            bound["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(**bound, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None,
        *,
        method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Replies that always parse: ``json_schema`` (default) constrains decoding to the
        schema with a grammar, ``function_calling`` forces a call of the schema as a tool, and
        ``json_mode`` constrains to any JSON object. A system instruction names the schema's
        fields either way; steering still applies to what the model writes inside the JSON.
        Pydantic classes come back as instances, other schemas as dicts."""
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        if method not in ("json_schema", "json_mode", "function_calling"):
            raise ValueError(f"unknown method {method!r}")
        if schema is None and method != "json_mode":
            raise ValueError("a schema is required unless method='json_mode'")
        if method == "function_calling":  # the schema as a tool, its call forced (a grammar)
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            traced = {"kwargs": {"method": method}, "schema": tool}
            llm = self.bind_tools([tool], tool_choice=name, ls_structured_output_format=traced)

            def parse(message: BaseMessage) -> Any:
                calls = [c for c in getattr(message, "tool_calls", []) if c["name"] == name]
                if not calls:
                    raise OutputParserException(f"the reply has no call of {name!r}")
                return _parse_structured(json.dumps(calls[0]["args"]), schema, None)

            prompt: Runnable = RunnablePassthrough()
        else:
            json_schema = convert_to_json_schema(schema) if schema is not None else None
            constraint = (
                Constraint.json_object()
                if method == "json_mode"
                else Constraint.json_schema(json_schema)
            )
            llm = self.bind(
                constraint=constraint,
                ls_structured_output_format={
                    "kwargs": {"method": method, "strict": strict},
                    "schema": json_schema if json_schema is not None else {},
                },
            )
            instructions = _instructions(json_schema)

            def add_instructions(value: LanguageModelInput) -> list[BaseMessage]:
                messages = self._convert_input(value).to_messages()
                if messages and isinstance(messages[0], SystemMessage):
                    first = SystemMessage(f"{messages[0].text}\n\n{instructions}")
                    return [first, *messages[1:]]
                return [SystemMessage(instructions), *messages]

            def parse(message: BaseMessage) -> Any:
                return _parse_structured(message.text, schema, json_schema)

            prompt = RunnableLambda(add_instructions, name="structured_output_instructions")
        parser = RunnableLambda(parse, name="structured_output_parser")
        if not include_raw:
            return prompt | llm | parser

        def with_raw(value: dict[str, Any]) -> dict[str, Any]:
            """The raw message, the parsed value or the parsing error: never raises, also when
            streamed (fallbacks cannot catch an error after a stream's first chunk)."""
            try:
                return {"raw": value["raw"], "parsed": parse(value["raw"]), "parsing_error": None}
            except Exception as exc:
                return {"raw": value["raw"], "parsed": None, "parsing_error": exc}

        return RunnableMap(raw=prompt | llm) | RunnableLambda(with_raw, name="structured_output")


# -- structured output helpers -------------------------------------------------------------------
def _instructions(json_schema: dict[str, Any] | None) -> str:
    head = "Reply with one JSON object and nothing else: no markdown, no text before or after it."
    if not json_schema:
        return head
    required = set(json_schema.get("required", ()))
    lines = [head, "Its keys:"]
    for name, prop in json_schema.get("properties", {}).items():
        kind = prop.get("type") or "/".join(
            str(p.get("type", "value")) for p in prop.get("anyOf", [])
        )
        need = "required" if name in required else "optional"
        desc = f": {prop['description']}" if prop.get("description") else ""
        lines.append(f'- "{name}" ({kind or "value"}, {need}){desc}')
    return "\n".join(lines)


def _parse_structured(text: str, schema: Any, json_schema: dict[str, Any] | None) -> Any:
    """The first JSON object in ``text``, validated against ``schema``."""
    start = text.find("{")
    try:
        if start < 0:
            raise ValueError("no JSON object in the reply")
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError as exc:
        raise OutputParserException(f"invalid JSON: {exc}", llm_output=text) from exc
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        try:
            if hasattr(schema, "model_validate"):
                return schema.model_validate(value)
            return schema.parse_obj(value)
        except Exception as exc:
            raise OutputParserException(
                f"reply does not match {schema.__name__}: {exc}", llm_output=text
            ) from exc
    missing = sorted(set((json_schema or {}).get("required", ())) - set(value))
    if missing:
        raise OutputParserException(f"reply lacks required keys {missing}", llm_output=text)
    return value
