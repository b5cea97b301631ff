"""Function calling for SteerLLM: LlamaIndex tools as the engine's tool specs, the
``tool_choice`` of each step (LlamaIndex's ``tool_required`` / ``tool_choice``, else the LLM's
``tool_policy``), the text-only grammar of a ``"none"`` step, and the calls of a response as
LlamaIndex ``ToolSelection`` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.tools import BaseTool

from actsteer.constrain import Constraint
from actsteer.tools import format_for, tool_choice, tool_specs

from .calls import arguments_of

ToolPolicy = Literal["auto", "call_then_answer"]
TOOL_POLICIES: tuple[str, ...] = ("auto", "call_then_answer")


def openai_tools(tools: Sequence[Any] | None) -> list[Any]:
    """LlamaIndex tools (anything with ``metadata.to_openai_tool``) as OpenAI tool dicts; dicts
    and ``actsteer.tools.ToolSpec`` values pass through. Local models have no 1024-character
    limit on a description, so LlamaIndex's OpenAI length check is skipped."""
    out = []
    for tool in tools or ():
        meta = getattr(tool, "metadata", None)
        if meta is not None and hasattr(meta, "to_openai_tool"):
            out.append(meta.to_openai_tool(skip_length_check=True))
        else:
            out.append(tool)
    return out


def answering(messages: Sequence[ChatMessage]) -> bool:
    """Whether tool results follow the last user message: the step after a round of calls."""
    for m in reversed(messages):
        role = m.role.value if isinstance(m.role, MessageRole) else str(m.role)
        if role in ("tool", "function"):
            return True
        if role == "user":
            return False
    return False


def step_choice(
    explicit: Any, tool_required: bool, policy: str, after_results: bool, has_tools: bool
) -> Any:
    """The ``tool_choice`` of one step: an explicit one (``FunctionAgent(initial_tool_choice=)``,
    ``FunctionCallingProgram``) first, then ``tool_required=True`` ("required"), then the
    policy: "call_then_answer" calls on a turn's first step and answers after the results;
    "auto" lets the model decide. Without tools: "auto" (as LlamaIndex's OpenAI LLM sends none)."""
    if not has_tools:
        return "auto"
    if explicit is not None:
        return explicit
    if tool_required:
        return "required"
    if policy == "call_then_answer":
        return "none" if after_results else "required"
    return "auto"


def prepare(
    tools: Sequence[Any],
    user_msg: str | ChatMessage | None,
    chat_history: Sequence[ChatMessage] | None,
    *,
    allow_parallel_tool_calls: bool,
    tool_required: bool,
    explicit_choice: Any,
    policy: str,
    answer_steering: Any,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The kwargs ``chat`` gets from ``chat_with_tools``: ``messages``, ``tools`` (OpenAI
    dicts), ``tool_choice``, ``parallel_tool_calls``, the other call kwargs, and
    ``answer_steering`` added to the steering of a step that answers after tool results."""
    messages = list(chat_history or [])
    if isinstance(user_msg, str):
        messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
    elif user_msg is not None:
        messages.append(user_msg)
    specs = openai_tools(tools)
    after = answering(messages)
    choice = step_choice(explicit_choice, tool_required, policy, after, bool(specs))
    out = dict(kwargs)
    if answer_steering is not None and after and tool_choice(choice, tool_specs(specs)) == "none":
        extra = out.get("extra_steering")
        out["extra_steering"] = answer_steering if extra is None else [extra, answer_steering]
    return {
        **out,
        "messages": messages,
        "tools": specs,
        "tool_choice": choice,
        "parallel_tool_calls": allow_parallel_tool_calls,
    }


def text_reply(tokenizer: Any, trigger: str | None = None) -> Constraint:
    """The grammar of a reply under ``tool_choice="none"``: text that neither opens with a tag
    nor contains the model's call trigger (``<tool_call>`` for Hermes-style templates and the
    generic block). Without it a model shown its own past calls writes another one (SmolLM2
    does after every tool result), which the engine would parse as a call. ``trigger`` names
    the call trigger where there is no tokenizer (a server's)."""
    trigger = trigger or format_for(tokenizer).trigger
    head = {"type": "regex", "pattern": r"[^<\s]"}
    rest = {"type": "any_text", "excludes": [trigger]}
    body = {"type": "sequence", "elements": [head, rest]}
    return Constraint.structural_tag({"type": "structural_tag", "format": body})


def selections(response: ChatResponse, error_on_no_tool_call: bool) -> list[ToolSelection]:
    """The well-formed calls of ``response`` (its ``ToolCallBlock`` blocks) as LlamaIndex
    selections; with none and ``error_on_no_tool_call``, a ``ValueError`` that says why."""
    found = [
        ToolSelection(
            tool_id=b.tool_call_id or "",
            tool_name=b.tool_name,
            tool_kwargs=arguments_of(b.tool_kwargs),
        )
        for b in response.message.blocks
        if isinstance(b, ToolCallBlock)
    ]
    if found or not error_on_no_tool_call:
        return found
    invalid = response.message.additional_kwargs.get("invalid_tool_calls") or []
    if invalid:
        why = "; ".join(f"{c.get('name')!r}: {c.get('error')}" for c in invalid)
        raise ValueError(f"SteerLLM's reply holds no usable tool call, only invalid ones ({why})")
    raise ValueError(
        "SteerLLM's reply holds no tool call (it answered in text); pass tool_required=True "
        "or a tool_choice to force one, or error_on_no_tool_call=False"
    )


class FunctionCalling:
    """``FunctionCallingLLM``'s two hooks for ``SteerLLM``: the chat kwargs of a tools step
    (its ``tool_policy`` and ``answer_steering`` fields decide a step's choice) and the calls
    of a response."""

    tool_policy: ToolPolicy
    answer_steering: Any

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` kwargs of a tools step: ``messages``, ``tools`` (OpenAI dicts from
        ``tool.metadata.to_openai_tool()``), ``tool_choice`` and ``parallel_tool_calls``."""
        return prepare(
            tools,
            user_msg,
            chat_history,
            allow_parallel_tool_calls=allow_parallel_tool_calls,
            tool_required=tool_required,
            explicit_choice=tool_choice,
            policy=self.tool_policy,
            answer_steering=self.answer_steering,
            kwargs=kwargs,
        )

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The reply's well-formed calls; none and ``error_on_no_tool_call``: ``ValueError``."""
        return selections(response, error_on_no_tool_call)
