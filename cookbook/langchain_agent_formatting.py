"""Agent output formatting: steer the tool-result step with ``no-disclaimer`` and ``concise``.

An agent's last step turns a tool result into the reply the user reads. Small instruct models
like to hedge there ("as a chatbot, I'm unable to...") or ramble. This recipe runs a minimal
agent loop (pick a tool, run it, answer from its result) and compares the answer step plain and
steered with ``no-disclaimer:0.5 + concise`` - the steering lives on a ``with_steering`` copy of
the chat model, so it applies to that step only and costs no prompt tokens.

SmolLM2-135M cannot call tools itself, so the loop picks the tool by keyword; with a bigger model
the same answer step plugs into any agent that takes a chat model object.

Run: ``python cookbook/langchain_agent_formatting.py [--max-tokens N]``
"""

from __future__ import annotations

import argparse
import os
import re

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_steer import ChatSteer

HEDGES = re.compile(r"as an? (ai|chatbot|language model)|i'm sorry|i am unable|i'm unable", re.I)


@tool
def search_reviews() -> str:
    """Look up this year's best-reviewed films."""
    return "Top rated films 2024: Dune Part Two (8.7), Perfect Days (8.1), Robot Dreams (8.0)."


TOOLS = {"search_reviews": search_reviews}


def plan(question: str) -> str:
    """The tool step, decided by keyword (the 135M model cannot emit tool calls)."""
    if "film" in question.lower():
        return "search_reviews"
    raise ValueError(f"no tool for {question!r}")


def run_tool_step(question: str) -> list[BaseMessage]:
    """The conversation up to the answer step: question, tool call, tool result."""
    name = plan(question)
    call = {"name": name, "args": {}, "id": "call-1", "type": "tool_call"}
    result = TOOLS[name].invoke(call)
    assert isinstance(result, ToolMessage)
    return [HumanMessage(question), AIMessage("", tool_calls=[call]), result]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = int(os.environ.get("ACTSTEER_COOKBOOK_MAX_TOKENS", "40"))
    parser.add_argument("--max-tokens", type=int, default=default, help="new tokens per reply")
    args = parser.parse_args()

    chat = ChatSteer(max_tokens=args.max_tokens)
    answer_plain = chat
    answer_steered = chat.with_steering("no-disclaimer:0.5 + concise")
    questions = [
        "What is your favourite film of the year?",
        "What film do you love most this year?",
        "Which film should I watch tonight?",
    ]
    histories = [run_tool_step(q) for q in questions]
    for label, model in (("plain", answer_plain), ("no-disclaimer + concise", answer_steered)):
        replies = model.batch(histories)  # both answer steps in one batched generate
        print(f"== answer step, {label}")
        for question, reply in zip(questions, replies):
            hedged = "hedges" if HEDGES.search(reply.content) else "direct"
            words = len(reply.content.split())
            print(f"  Q: {question}\n  A ({hedged}, {words} words): {reply.content!r}")
        print(f"  steering: {replies[0].response_metadata['steering']['expression']}")


if __name__ == "__main__":
    main()
