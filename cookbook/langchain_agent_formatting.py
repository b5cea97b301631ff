"""A LangChain agent on the embedded model, steered per step: calls unsteered, the answer steered.

``create_agent`` runs its loop (model -> tool -> model) on ``ChatSteer``. A small middleware
decides each model step's settings, the way agent middleware is meant to:

- the tool step (no tool result yet) runs with ``tool_choice="any"``: a grammar makes the call
  well formed on any model, and no steering touches the arguments;
- the answer step (after the tool result) runs with ``tool_choice="none"`` and the steering
  ``no-disclaimer:0.5 + concise``, so only the reply the user reads is steered, at no prompt cost.

SmolLM2-135M cannot decide on its own when to call a tool (unforced, it answers in prose), which
is why the tool step is forced here; a bigger model can run with ``tool_choice="auto"`` and keep
the same steering of the answer step. The recipe prints the tool calls the agent made and the
final answer with and without the answer steering.

Run: ``python cookbook/langchain_agent_formatting.py [--max-tokens N]``
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from langchain_steer import ChatSteer

HEDGES = re.compile(r"as an? (ai|chatbot|language model)|i'm sorry|i am unable|i'm unable", re.I)
ANSWER_STEERING = "no-disclaimer:0.5 + concise"
CALLS: list[dict[str, Any]] = []


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    CALLS.append({"city": city})
    return f"It is 18 degrees and sunny in {city}, with a light breeze."


def steer_by_step(answer_steering: str | None):
    """Middleware: force the tool step, steer the answer step (``None``: leave it plain)."""

    @wrap_model_call
    def middleware(request: ModelRequest, handler) -> ModelResponse:
        if not any(isinstance(m, ToolMessage) for m in request.messages):
            return handler(request.override(tool_choice="any"))
        settings = dict(request.model_settings)
        if answer_steering:
            settings["steering"] = answer_steering
        return handler(request.override(tool_choice="none", model_settings=settings))

    return middleware


def run(chat: ChatSteer, question: str, answer_steering: str | None) -> tuple[list, AIMessage]:
    """One agent run: the tool calls it made and its final answer."""
    agent = create_agent(chat, tools=[get_weather], middleware=[steer_by_step(answer_steering)])
    state = agent.invoke({"messages": [{"role": "user", "content": question}]})
    calls = [c for m in state["messages"] if isinstance(m, AIMessage) for c in m.tool_calls]
    return calls, state["messages"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = int(os.environ.get("ACTSTEER_COOKBOOK_MAX_TOKENS", "40"))
    parser.add_argument("--max-tokens", type=int, default=default, help="new tokens per reply")
    args = parser.parse_args()

    # the tool call needs its ~30 tokens whatever the answer's budget
    chat = ChatSteer(max_tokens=max(args.max_tokens, 64))
    questions = ["What is the weather in Paris?", "Should I take an umbrella in Oslo today?"]
    for label, steering in (("plain", None), (ANSWER_STEERING, ANSWER_STEERING)):
        print(f"== answer step: {label}")
        for question in questions:
            calls, answer = run(chat, question, steering)
            hedged = "hedges" if HEDGES.search(answer.text) else "direct"
            shown = ", ".join(f"{c['name']}({c['args']})" for c in calls)
            print(f"  Q: {question}\n  tool calls: {shown}")
            print(f"  A ({hedged}, {len(answer.text.split())} words): {answer.text!r}")
            print(f"  steering: {answer.response_metadata['steering']['expression']}")


if __name__ == "__main__":
    main()
