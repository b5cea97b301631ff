"""``CallOptions``: the per-call options every adapter accepts, and the engine ``Request`` a call
becomes. LangChain's ``ChatSteer``/``SteerLLM`` and LlamaIndex's ``SteerLLM`` each keep only
their framework glue (message conversion, callbacks, caches): the vocabulary, its aliases, the
merge of a model's fields with a call's kwargs, the steering resolve and the request are here,
once, so the adapters accept the same options and refuse the same mistakes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .core.steering import Steering
from .core.vector import SteeringVector
from .engine import GenerationOptions, Request
from .errors import OptionsError

if TYPE_CHECKING:
    from .engine import Engine
    from .prompts import Prompt

#: Other names users pass for an option (LangChain's, OpenAI's, transformers'): name -> option.
ALIASES = {"max_tokens": "max_new_tokens", "response_format": "constraint"}


@dataclass(frozen=True)
class CallOptions:
    """What one call asks for, merged from a model's fields and the call's kwargs."""

    steering: Any = None
    """Expression (``"json:4 + no-disclaimer"``), ``SteeringVector``, ``Steering``, or a list."""
    steering_coeff: float | None = None
    """Multiplies every steering coefficient (``0`` switches steering off)."""
    steering_positions: str | None = None
    """Where steering applies, overriding the presets' defaults."""
    extra_steering: Any = None
    """Steering added to ``steering`` for this call (not scaled by ``steering_coeff``)."""
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    tools: Any = ()
    """Tools the model may call (OpenAI tool dicts or ``ToolSpec`` values)."""
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    constraint: Any = None
    """A ``Constraint``, a JSON schema dict or OpenAI's ``response_format``."""
    truncate: str | None = None
    """A prompt over the context window: None refuses it, ``"left"`` keeps its last tokens,
    ``"drop_oldest_messages"`` drops a chat's oldest turns."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option name a call may pass, aliases included."""
        return (*(f.name for f in dataclasses.fields(cls)), *ALIASES)

    @classmethod
    def merge(
        cls, fields: Mapping[str, Any], kwargs: Mapping[str, Any], *, owner: str
    ) -> CallOptions:
        """``kwargs`` over ``fields`` (a model's field values for these options); either may
        use an alias. Unknown kwargs are a ``TypeError`` naming what is accepted, and an option
        given under two names with two values an ``OptionsError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in kwargs if k not in known and k not in ALIASES)
        if unknown:
            raise TypeError(
                f"{owner} got unknown call options {unknown}; accepted: "
                f"{', '.join(sorted(cls.names()))}"
            )
        values = {}
        for given in (_canonical(fields, owner), _canonical(kwargs, owner)):
            # None for these is "not given", so a call's stop=None keeps the model's stop
            values.update((k, v) for k, v in given.items() if v is not None or k not in _NOT_NONE)
        values = {k: v for k, v in values.items() if k in known}
        if "stop" in values:
            stop = values["stop"]
            values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        return cls(**values)

    def generation_options(self) -> GenerationOptions:
        """The sampling options (checked: ``OptionsError`` on a bad value)."""
        return GenerationOptions(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop or ()),
            seed=self.seed,
        )

    def request(self, engine: Engine, prompt: Prompt, constraint: Any = None) -> Request:
        """The engine request for ``prompt``; steering is resolved here, once (it may read
        prepared preset vectors). ``constraint`` stands in when the call gave none."""
        steering = engine.resolve(
            self.steering, coeff=self.steering_coeff, positions=self.steering_positions
        )
        steering += engine.resolve(self.extra_steering)
        return Request(
            prompt,
            steering,
            self.generation_options(),
            constraint=self.constraint if self.constraint is not None else constraint,
            tools=tuple(self.tools or ()),
            tool_choice=self.tool_choice,
            parallel_tool_calls=self.parallel_tool_calls,
            truncate=self.truncate,  # type: ignore[arg-type]  # checked by Request
        )


#: Options whose None means "the default" rather than a value.
_NOT_NONE = frozenset({"max_new_tokens", "temperature", "top_p", "stop", "tools"})


def _canonical(values: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """``values`` with aliases under their option's name."""
    out = {k: v for k, v in values.items() if k not in ALIASES}
    for alias, name in ALIASES.items():
        if alias in values:
            if name in out and out[name] != values[alias]:
                raise OptionsError(
                    f"{owner} got {name}={out[name]!r} and its alias {alias}={values[alias]!r}; "
                    "pass one"
                )
            out[name] = values[alias]
    return out


def steering_key(value: Any) -> Any:
    """A stable, content-based representation of a steering value for cache keys and traces:
    expression strings as written, vectors by digest, ``Steering`` by its full settings."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, SteeringVector):
        return f"vector:{value.digest()}"
    if isinstance(value, Steering):
        return "steering:" + value.key()
    if isinstance(value, Mapping):
        return "steering:" + json.dumps(dict(value), sort_keys=True, default=list)
    if isinstance(value, list | tuple):
        return [steering_key(v) for v in value]
    return repr(value)


def steering_label(value: Any) -> str | None:
    """A printable form of a steering value, without a model: expressions as written (a
    mapping's with its options), vectors and ``Steering`` values through ``Steering.describe``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, SteeringVector):
        return Steering(value).describe()
    if isinstance(value, Steering):
        return value.describe()
    if isinstance(value, Mapping):
        options = ", ".join(f"{k}={v}" for k, v in value.items() if k != "expression")
        return f"{value.get('expression')}" + (f" [{options}]" if options else "")
    if isinstance(value, list | tuple):
        parts = [steering_label(v) for v in value]
        return " + ".join(p for p in parts if p) or None
    return repr(value)
