"""Structured output for SteerLLM: LlamaIndex's text-completion program with a JSON-by-example
prompt, so that small local models fill in an object instead of copying a schema back.

LlamaIndex's default for an LLM without function calling is ``LLMTextCompletionProgram`` with a
``PydanticOutputParser``, whose instructions show the model the full JSON schema (with its braces
doubled, as sent in llama-index-core 0.14). Small models tend to echo that schema: SmolLM2-135M
answers ``{"properties": {"name": ...`` every time. Shown a skeleton of the wanted object
(``{"name": "...", "country": "..."}``) the same model fills it in. Parsing and its errors are
LlamaIndex's own: unparseable output raises ``ValueError`` or pydantic's ``ValidationError``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from llama_index.core.output_parsers import PydanticOutputParser
from llama_index.core.program.llm_program import LLMTextCompletionProgram
from llama_index.core.program.utils import get_program_for_llm
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import BasePydanticProgram, Model, PydanticProgramMode

if TYPE_CHECKING:
    from llama_index.core.llms.llm import LLM

#: Placeholder values by JSON-schema type in the example object.
_PLACEHOLDERS: dict[str, Any] = {
    "string": "...",
    "integer": 0,
    "number": 0.0,
    "boolean": False,
    "array": [],
    "object": {},
}


class ExampleJSONParser(PydanticOutputParser[Model]):
    """A ``PydanticOutputParser`` that asks for JSON by example instead of by schema."""

    def format(self, query: str) -> str:
        return f"{query}\n\nReply with only a JSON object of this form: {self.example()}"

    def example(self) -> str:
        """The wanted object with placeholder values, e.g. ``{"name": "...", "age": 0}``."""
        schema = self.output_cls.model_json_schema()
        return json.dumps({k: _placeholder(v, schema) for k, v in schema["properties"].items()})


def structured_program(
    llm: LLM, output_cls: type[Model], prompt: BasePromptTemplate
) -> BasePydanticProgram[Model]:
    """The program ``llm.structured_predict`` runs: JSON by example for the default (and the
    explicit text-completion) mode; any other ``pydantic_program_mode`` as LlamaIndex picks it."""
    mode = llm.pydantic_program_mode
    if mode in (PydanticProgramMode.DEFAULT, PydanticProgramMode.LLM):
        return LLMTextCompletionProgram.from_defaults(
            output_parser=ExampleJSONParser(output_cls), prompt=prompt, llm=llm
        )
    return get_program_for_llm(output_cls, prompt, llm, pydantic_program_mode=mode)


def _placeholder(prop: dict[str, Any], schema: dict[str, Any]) -> Any:
    ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("allOf", []) if "$ref" in a), None)
    if ref:  # a nested model: its own example object
        nested = schema.get("$defs", {}).get(ref.rsplit("/", 1)[-1], {})
        return {k: _placeholder(v, schema) for k, v in nested.get("properties", {}).items()}
    if "enum" in prop:
        return prop["enum"][0]
    kinds = [prop.get("type")] + [a.get("type") for a in prop.get("anyOf", [])]
    kind = next((k for k in kinds if k and k != "null"), "string")
    return _PLACEHOLDERS.get(kind, "...")
