"""Structured output for SteerLLM: LlamaIndex's text-completion program with a JSON-by-example
prompt, so that small local models fill in an object instead of copying a schema back, and the
reply constrained to the output class's JSON schema by a grammar, so that it always parses.

LlamaIndex's default for an LLM without function calling is ``LLMTextCompletionProgram`` with a
``PydanticOutputParser``, whose instructions show the model the full JSON schema (with its braces
doubled, as sent in llama-index-core 0.14). Small models tend to echo that schema: SmolLM2-135M
answers ``{"properties": {"name": ...`` every time. Shown a skeleton of the wanted object
(``{"name": "...", "country": "..."}``) the same model fills it in. Parsing and its errors are
LlamaIndex's own: unparseable output raises ``ValueError`` or pydantic's ``ValidationError``
(with the grammar only a reply cut off by ``max_new_tokens`` can fail to parse).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.output_parsers import PydanticOutputParser
from llama_index.core.program.llm_program import LLMTextCompletionProgram
from llama_index.core.program.utils import get_program_for_llm
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.types import BasePydanticProgram, Model, PydanticProgramMode

from actsteer.constrain import Constraint
from actsteer.errors import ConstraintError

if TYPE_CHECKING:
    from llama_index.core.llms.llm import LLM

dispatcher = get_dispatcher(__name__)
logger = logging.getLogger(__name__)
#: The modes whose program is the text-completion one (whose reply a grammar can shape).
TEXT_MODES = (PydanticProgramMode.DEFAULT, PydanticProgramMode.LLM)

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
    """A ``PydanticOutputParser`` that asks for JSON by example instead of by schema.

    ``constrained``: the reply follows the schema's grammar, so the example need not be valid
    JSON, and had better not be: a model copies a typed placeholder (under the grammar SmolLM2
    answered "Alice is 30" with ``"age": 0`` when shown ``"age": 0``, and with 30 when shown
    ``"age": ...``). Values are then ``...`` and choices ``"low" | "high"``."""

    def __init__(self, output_cls: type[Model], constrained: bool = False, **kwargs: Any) -> None:
        super().__init__(output_cls, **kwargs)
        self.constrained = constrained

    def format(self, query: str) -> str:
        return f"{query}\n\nReply with only a JSON object of this form: {self.example()}"

    def example(self) -> str:
        """The wanted object with placeholder values, e.g. ``{"name": "...", "age": 0}``
        (constrained: ``{"name": "...", "age": ...}``)."""
        schema = self.output_cls.model_json_schema()
        props = schema["properties"].items()
        return _dump({k: _placeholder(v, schema, self.constrained) for k, v in props})


def structured_program(
    llm: LLM, output_cls: type[Model], prompt: BasePromptTemplate, constrained: bool = False
) -> BasePydanticProgram[Model]:
    """The program ``llm.structured_predict`` runs: JSON by example for the default (and the
    explicit text-completion) mode; any other ``pydantic_program_mode`` as LlamaIndex picks it."""
    mode = llm.pydantic_program_mode
    if mode in TEXT_MODES:
        parser = ExampleJSONParser(output_cls, constrained=constrained)
        return LLMTextCompletionProgram.from_defaults(output_parser=parser, prompt=prompt, llm=llm)
    return get_program_for_llm(output_cls, prompt, llm, pydantic_program_mode=mode)


class _Bare(str):
    """Example text written as is, not as a JSON string."""


def _dump(value: Any) -> str:
    """``json.dumps`` of an example, with ``_Bare`` parts unquoted."""
    if isinstance(value, _Bare):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dump(v) for v in value) + "]"
    return json.dumps(value)


def _placeholder(prop: dict[str, Any], schema: dict[str, Any], constrained: bool) -> Any:
    ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("allOf", []) if "$ref" in a), None)
    if ref:  # a nested model: its own example object
        nested = schema.get("$defs", {}).get(ref.rsplit("/", 1)[-1], {})
        props = nested.get("properties", {}).items()
        return {k: _placeholder(v, schema, constrained) for k, v in props}
    if "enum" in prop:
        choices = prop["enum"]
        return _Bare(" | ".join(json.dumps(c) for c in choices)) if constrained else choices[0]
    kinds = [prop.get("type")] + [a.get("type") for a in prop.get("anyOf", [])]
    kind = next((k for k in kinds if k and k != "null"), "string")
    if constrained and kind != "string":
        return _Bare("[...]" if kind == "array" else "...")
    return _PLACEHOLDERS.get(kind, "...")


def schema_constraint(output_cls: type[Model]) -> Constraint | None:
    """The grammar of ``output_cls``'s JSON schema; None (prompt and parse only, with a
    warning) for a schema xgrammar cannot compile."""
    try:
        return Constraint.json_schema(output_cls.model_json_schema())
    except ConstraintError as exc:
        logger.warning("%s: structured output without a grammar (%s)", output_cls.__name__, exc)
        return None


class StructuredOutput:
    """SteerLLM's structured output: LlamaIndex's own flow (start/end events, parsing,
    ``StructuredLLM``, streaming partials) with three changes: the program asks for JSON by
    example, the reply follows the output class's JSON schema (a grammar, in the text-completion
    modes), and the call's steering gets ``structured_steering`` added to it."""

    structured_steering: Any
    pydantic_program_mode: PydanticProgramMode

    @dispatcher.span
    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        dispatcher.event(
            LLMStructuredPredictStartEvent(
                output_cls=output_cls, template=prompt, template_args=prompt_args
            )
        )
        kw = self._structured_kwargs(output_cls, llm_kwargs)
        program = self._program(output_cls, prompt, kw)
        result = program(llm_kwargs=kw, **prompt_args)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @dispatcher.span
    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        dispatcher.event(
            LLMStructuredPredictStartEvent(
                output_cls=output_cls, template=prompt, template_args=prompt_args
            )
        )
        kw = self._structured_kwargs(output_cls, llm_kwargs)
        program = self._program(output_cls, prompt, kw)
        result = await program.acall(llm_kwargs=kw, **prompt_args)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    def _structured_stream_call(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Any, None, None]:
        kw = self._structured_kwargs(output_cls, llm_kwargs)
        program = self._program(output_cls, prompt, kw)
        return program.stream_call(llm_kwargs=kw, **prompt_args)

    async def _structured_astream_call(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncGenerator[Any, None]:
        kw = self._structured_kwargs(output_cls, llm_kwargs)
        program = self._program(output_cls, prompt, kw)
        return await program.astream_call(llm_kwargs=kw, **prompt_args)

    def _program(
        self, output_cls: type[Model], prompt: PromptTemplate, kw: dict[str, Any]
    ) -> BasePydanticProgram[Model]:
        constrained = kw.get("constraint") is not None
        return structured_program(self, output_cls, prompt, constrained)  # type: ignore[arg-type]

    def _structured_kwargs(
        self, output_cls: type[Model], llm_kwargs: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The call kwargs of a structured call: ``structured_steering`` added, and in the
        text-completion modes the schema's grammar, in process (a function-calling program
        forces a tool call instead, a grammar already)."""
        kw = dict(llm_kwargs or {})
        kw.setdefault("extra_steering", self.structured_steering)
        if self.pydantic_program_mode in TEXT_MODES and "constraint" not in kw:
            constraint = schema_constraint(output_cls)
            if constraint is not None:
                kw["constraint"] = constraint
        return kw
