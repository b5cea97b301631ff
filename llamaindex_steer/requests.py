"""How ``SteerLLM``'s calls become engine ``Request`` values: the LLM's fields and a call's
kwargs merged by ``actsteer.CallOptions``; chat messages and completion prompts rendered as
LlamaIndex specifies for chat models; tools and a ``"none"`` choice's text-only grammar."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.llms.llm import default_completion_to_prompt

from actsteer.call_options import CallOptions
from actsteer.engine import Request
from actsteer.prompts import Prompt, fit_template
from actsteer.tools import tool_choice as normalise_choice
from actsteer.tools import tool_specs

from .calls import as_engine_message, has_chat_template
from .tools import openai_tools, text_reply

if TYPE_CHECKING:
    from actsteer import SteeredModel


class Requests:
    """How ``SteerLLM``'s calls become engine requests: its fields and the call's kwargs merged
    by ``CallOptions``, its prompts rendered the way LlamaIndex specifies for chat models."""

    if TYPE_CHECKING:
        steering: Any
        steering_coeff: float | None
        steering_positions: str | None
        max_new_tokens: int
        temperature: float
        top_p: float
        stop: list[str] | None
        seed: int | None
        truncate: str | None
        base_url: str | None
        system_prompt: str | None
        messages_to_prompt: Any
        completion_to_prompt: Any
        steered_model: SteeredModel
        engine: Any

    def _request(
        self,
        kwargs: dict[str, Any],
        *,
        prompt: str | None = None,
        formatted: bool = False,
        messages: Sequence[ChatMessage] | None = None,
    ) -> Request:
        """Merge call kwargs over the fields into one engine request; the steering is resolved
        here, once (it may read or extract preset vectors: async callers run this in a
        thread)."""
        fields = {
            "steering": self.steering,
            "steering_coeff": self.steering_coeff,
            "steering_positions": self.steering_positions,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
            "truncate": self.truncate,
        }
        call = CallOptions.merge(fields, kwargs, owner="SteerLLM")
        if messages is not None:
            engine_prompt = self._chat_prompt(messages)
        else:
            engine_prompt = self._completion_prompt(prompt or "", formatted)
        tools = tool_specs(openai_tools(call.tools))
        choice = normalise_choice(call.tool_choice, tools)
        call = dataclasses.replace(call, tools=tools, tool_choice=choice)
        text_only = None
        if tools and choice == "none":  # a reply that cannot start a call
            if self.base_url is None:
                text_only = text_reply(self.steered_model.tokenizer)
            else:
                text_only = text_reply(None, self.engine.tool_format.trigger)
        return call.request(self.engine, engine_prompt, constraint=text_only)

    def _chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        if self.messages_to_prompt not in (None, generic_messages):
            return self.messages_to_prompt(messages)  # a user-supplied formatter: sent verbatim
        plain = self.base_url is not None  # a server: call arguments as JSON text
        return self._fitted([as_engine_message(m, plain) for m in messages])

    def _completion_prompt(self, prompt: str, formatted: bool) -> Prompt:
        if formatted:
            return prompt
        if self.completion_to_prompt not in (None, default_completion_to_prompt):
            return self.completion_to_prompt(prompt)
        if self.base_url is None and not has_chat_template(self.steered_model):
            return f"{self.system_prompt}\n\n{prompt}" if self.system_prompt else prompt
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return self._fitted([*system, {"role": "user", "content": prompt}])

    def _fitted(self, chat: list[dict[str, Any]]) -> Prompt:
        """In-process, the roles this model's chat template accepts (``fit_template``); a
        server applies its own template."""
        return (
            chat if self.base_url is not None else fit_template(self.steered_model.tokenizer, chat)
        )
