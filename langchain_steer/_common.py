"""Glue shared by ChatSteer and SteerLLM: the runtime and steering fields, per-call options,
stable cache keys for steering, usage metadata, and the engine ``Request`` each call becomes.
How the calls of one ``batch`` reach the engine together is in ``_batch``."""

from __future__ import annotations

from typing import Any, Literal, Self

from langchain_core.language_models import LangSmithParams
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import LLMResult
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from actsteer import Generation, SteeredModel, resolve
from actsteer.call_options import CallOptions, steering_key
from actsteer.default_model import DEFAULT_MODEL_NAME
from actsteer.engine import Engine, GenerationOptions, Request
from actsteer.prompts import Prompt, check_budget, check_truncate
from actsteer.remote import remote_engine
from actsteer.runtime import deadline
from actsteer.runtime.loading import check_model

from ._batch import BatchedConfigurableAlternatives, BatchedConfigurableFields

#: Call options that are also fields: a per-call value overrides the field of the same name
#: (the whole vocabulary, reply-shaping options and aliases included, is ``CallOptions``).
OPTION_FIELDS = (
    "steering",
    "steering_coeff",
    "steering_positions",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "timeout",
    "truncate",
)
#: Options of remote APIs, accepted at construction and ignored.
IGNORED_INIT = ("max_retries",)


class SteerFields(BaseModel):
    """Fields and per-call option handling common to ChatSteer and SteerLLM."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    model: str | None = None
    """Hugging Face model id or local path; ``None`` is the embedded SmolLM2-135M-Instruct."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Passed to ``SteeredModel.from_pretrained`` (``dtype``, ``device_map``, ...)."""
    runtime: SteeredModel | None = Field(default=None, exclude=True)
    """A loaded ``SteeredModel`` to share; loaded lazily from ``model`` on first use otherwise."""
    base_url: str | None = None
    """An ``actsteer serve`` vLLM server (``http://host:8000/v1``): calls go there, with the
    same steering fields and options; ``model`` is then the served model's name."""
    api_key: SecretStr | None = Field(default=None, exclude=True)
    """The server's API key, if it wants one (``base_url`` only)."""
    steering: Any = None
    """Expression (``"json:4 + no-disclaimer"``), ``SteeringVector``, ``Steering`` or a list."""
    steering_coeff: float | None = None
    """Multiplies every steering coefficient (``0`` switches steering off)."""
    steering_positions: Literal["all", "prompt", "generated", "actadd"] | None = None
    """Where steering applies, overriding the presets' defaults."""
    max_tokens: int = 256
    """Maximum number of new tokens."""
    temperature: float = 0.0
    """0 is greedy (deterministic); above 0 samples."""
    top_p: float = 1.0
    """Nucleus sampling mass when sampling."""
    seed: int | None = None
    """Sampling seed: the same seed gives the same text, also inside a batch."""
    stop: list[str] | None = None
    """Stop strings (multi-token allowed); the output is cut before the first one."""
    timeout: float | None = None
    """Seconds a whole call may take, as ``ChatOpenAI``'s ``timeout``: past it the call's rows
    stop and it raises ``TimeoutError`` (None: no limit)."""
    truncate: str | None = None
    """A prompt over the context window: None refuses it (``ContextWindowError``), ``"left"``
    keeps its last tokens, ``"drop_oldest_messages"`` drops the oldest chat turns (the system
    turns and the newest turns from a user turn on are kept)."""
    batch_size: int = Field(default=32, ge=1)
    """Most rows in one batched generate (``max_concurrency`` in the config lowers it)."""

    def __init__(self, **data: Any) -> None:
        # the same check, and the same ActsteerError, as llamaindex_steer.SteerLLM
        resolve.check(
            data.get("steering"),
            coeff=data.get("steering_coeff"),
            positions=data.get("steering_positions"),
        )
        super().__init__(**data)
        GenerationOptions(  # the options too, now, with the same OptionsError as LlamaIndex
            self.max_tokens, self.temperature, self.top_p, tuple(self.stop or ()), self.seed
        )
        check_truncate(self.truncate)
        if self.runtime is None and self.base_url is None:  # a model that surely cannot load
            check_model(self.model, self.model_kwargs)
        elif self.runtime is not None:  # its window is known: no prompt could fit beside this
            check_budget(self.max_tokens, self.runtime.engine.context_window)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = {k: v for k, v in values.items() if k not in IGNORED_INIT}
            if "max_new_tokens" in values:  # LlamaIndex's and transformers' name for it
                values.setdefault("max_tokens", values.pop("max_new_tokens"))
        return values

    @property
    def model_name(self) -> str:
        """The served model's name, known without loading it."""
        if self.model is not None:
            return self.model
        if self.runtime is not None:
            return self.runtime.fingerprint.name
        return DEFAULT_MODEL_NAME

    def steered_model(self) -> SteeredModel:
        """The runtime, loading (once per process and model id) on first use."""
        if self.runtime is None:
            self.runtime = SteeredModel.shared(self.model, **self.model_kwargs)
        return self.runtime

    def engine(self) -> Engine:
        """What this model's calls go to (``actsteer.engine.Engine``): the in-process model, or
        the server at ``base_url``."""
        if self.base_url is not None:
            key = self.api_key.get_secret_value() if self.api_key else "EMPTY"
            return remote_engine(self.base_url, self.model_name, key)
        return self.steered_model().engine

    def get_token_ids(self, text: str) -> list[int]:
        """The model's own token ids of ``text`` (LangChain's default tokenizer is GPT-2's, which
        cannot load offline: counts came back 0 and ``trim_messages`` never trimmed)."""
        return self.engine().tokenize(text)

    def with_steering(
        self,
        steering: Any,
        *,
        coeff: float | None = None,
        positions: str | None = None,
    ) -> Self:
        """A copy of this model (same class, same loaded runtime) with other steering: for APIs
        that take a model object rather than call options (agents, structured output)."""
        changes: dict[str, Any] = {"steering": steering}
        if coeff is not None:
            changes["steering_coeff"] = coeff
        if positions is not None:
            changes["steering_positions"] = positions
        return self._copy_with(**changes)

    def configurable_fields(self, **kwargs: Any) -> BatchedConfigurableFields:
        """LangChain's ``configurable_fields`` (e.g. ``steering`` as a per-invocation knob),
        whose ``batch`` keeps differently configured rows in one batched generate."""
        base = super().configurable_fields(**kwargs)  # type: ignore[misc]  # validates the keys
        return BatchedConfigurableFields(default=base.default, fields=base.fields)

    def configurable_alternatives(
        self,
        which: Any,
        *,
        default_key: str = "default",
        prefix_keys: bool = False,
        **kwargs: Any,
    ) -> BatchedConfigurableAlternatives:
        """LangChain's ``configurable_alternatives`` (e.g. named steering presets as
        ``with_steering`` copies), batched across rows like ``configurable_fields``."""
        return BatchedConfigurableAlternatives(
            which=which,
            default=self,
            alternatives=kwargs,
            default_key=default_key,
            prefix_keys=prefix_keys,
        )

    def _copy_with(self, **changes: Any) -> Self:
        fields = {
            k: getattr(self, k) for k in self.model_fields_set if k in type(self).model_fields
        }
        return type(self)(**{**fields, "runtime": self.runtime, **changes})

    def generate(
        self, inputs: list[Any], stop: list[str] | None = None, callbacks: Any = None, **kwargs: Any
    ) -> LLMResult:
        """LangChain's ``generate`` with per-call options folded into the fields: caches key on
        the fields, so a steered answer is never served for an unsteered call (or vice versa)."""
        model, rest = self._fold_options(dict(kwargs))
        if model is not self:
            return model.generate(inputs, stop, callbacks, **rest)
        return super().generate(inputs, stop, callbacks, **kwargs)  # type: ignore[misc]

    async def agenerate(
        self, inputs: list[Any], stop: list[str] | None = None, callbacks: Any = None, **kwargs: Any
    ) -> LLMResult:
        """Async ``generate``, folding per-call options the same way."""
        model, rest = self._fold_options(dict(kwargs))
        if model is not self:
            return await model.agenerate(inputs, stop, callbacks, **rest)
        return await super().agenerate(inputs, stop, callbacks, **kwargs)  # type: ignore[misc]

    def _fold_options(self, kwargs: dict[str, Any]) -> tuple[Self, dict[str, Any]]:
        """Move per-call option kwargs into a copy's fields, so that LangChain's cache key
        (built from ``_identifying_params``) and traces show the values that were used."""
        if "max_new_tokens" in kwargs:  # the alias _request takes: part of the cache key too
            kwargs.setdefault("max_tokens", kwargs.pop("max_new_tokens"))
        changes = {k: kwargs.pop(k) for k in OPTION_FIELDS if k in kwargs}
        return (self._copy_with(**changes) if changes else self), kwargs

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """Everything that shapes an output, steering included, for caches and traces."""
        return self._identifying()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)  # type: ignore[misc]
        params["ls_provider"] = "actsteer"
        params["ls_model_name"] = kwargs.get("model") or self.model_name
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _identifying(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "base_url": self.base_url,  # a server's and an in-process model's answers differ
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
            "steering": steering_key(self.steering),
            "steering_coeff": self.steering_coeff,
            "steering_positions": self.steering_positions,
            "truncate": self.truncate,
        }

    def _request(self, prompt: Prompt, stop: list[str] | None, kwargs: dict[str, Any]) -> Request:
        """Fields and per-call kwargs (kwargs win) as one engine request; the steering is
        resolved here, once."""
        kw = dict(kwargs)
        kw.pop("stream", None)
        kw.pop("timeout", None)  # a deadline for the whole call (``_timeout``)
        model = kw.pop("model", None)
        if model is not None and model != self.model_name:
            raise ValueError(
                f"{type(self).__name__} serves {self.model_name!r} and cannot switch "
                f"to {model!r} per call; build another {type(self).__name__}(model={model!r})"
            )
        fields = {k: getattr(self, k) for k in OPTION_FIELDS if k != "timeout"}
        if stop is not None:
            kw["stop"] = stop
        call = CallOptions.merge({**fields, "stop": self.stop}, kw, owner=type(self).__name__)
        return call.request(self.engine(), prompt)

    def _batch_request(self, value: Any, kwargs: dict[str, Any]) -> Request | None:
        """The request that ``invoke(value, **kwargs)`` will make, built ahead for ``_batch``;
        None when that invoke would not generate in one piece (``streaming=True``)."""
        model, rest = self._fold_options(kwargs)
        if getattr(model, "streaming", False):
            return None
        for k in ("ls_structured_output_format", "structured_output_format"):
            rest.pop(k, None)
        stop = rest.pop("stop", None)
        value = self._convert_input(value)
        if model._cached(value, stop, rest):
            return None
        return model._request(model._prompt_of(value), stop, rest)

    def _prompt_of(self, value: Any) -> Prompt:
        """The engine prompt for a LangChain ``PromptValue``."""
        raise NotImplementedError

    def _cached(self, value: Any, stop: list[str] | None, kwargs: dict[str, Any]) -> bool:
        """Whether LangChain's cache will answer this input (so the batch need not run it):
        the same lookup the model's LangChain base class makes before generating."""
        raise NotImplementedError

    def _timeout(self, kwargs: dict[str, Any]) -> float | None:
        """The call's ``timeout`` (per call, else the field's): seconds it may take in all."""
        return deadline.checked(kwargs.get("timeout", self.timeout))


def usage(g: Generation) -> UsageMetadata:
    """LangChain usage metadata from a generation's token counts."""
    return UsageMetadata(
        input_tokens=g.prompt_tokens,
        output_tokens=g.completion_tokens,
        total_tokens=g.prompt_tokens + g.completion_tokens,
    )


def truncated(g: Generation) -> dict[str, int]:
    """``{"truncated_tokens": n}`` for a reply whose prompt was cut to fit (``truncate=``)."""
    return {"truncated_tokens": g.truncated_tokens} if g.truncated_tokens else {}
