"""A LangChain chain whose JSON-formatting step uses the ``json`` preset instead of a system prompt.

The ``json`` preset is the system prompt "Reply with plain JSON only..." compiled into a
prompt-template vector: added while generating, it stands in for sending those tokens on every
call. The recipe runs the same formatting chain both ways, prints both outputs, whether each
parses as JSON, and the prompt tokens the vector saves.

Run: ``python cookbook/langchain_json_chain.py [--max-tokens N]``
"""

from __future__ import annotations

import argparse
import json
import os

from langchain_core.prompts import ChatPromptTemplate

from actsteer import presets
from langchain_steer import ChatSteer

RECORDS = [
    "Tom is a 52-year-old carpenter who lives in Bristol.",
    "Maria Lopez, 34, moved to Lisbon last spring to work as a nurse.",
]
TASK = "Give the name, age and city of this person as JSON: {text}"


def parses(text: str) -> bool:
    """Whether the whole reply is one JSON value (no fences, no chatter)."""
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = int(os.environ.get("ACTSTEER_COOKBOOK_MAX_TOKENS", "48"))
    parser.add_argument("--max-tokens", type=int, default=default, help="new tokens per reply")
    args = parser.parse_args()

    chat = ChatSteer(max_tokens=args.max_tokens)
    system_prompt = presets.get("json").system_prompt
    prompted = ChatPromptTemplate.from_messages([("system", system_prompt), ("human", TASK)]) | chat
    # the same formatting step: the instruction travels as a vector, not as prompt tokens
    steered = ChatPromptTemplate.from_messages([("human", TASK)]) | chat.with_steering("json")

    rows = [{"text": r} for r in RECORDS]
    tokens = {}
    for label, chain in (("system prompt", prompted), ("json steering", steered)):
        replies = chain.batch(rows)  # one batched generate on the local model
        tokens[label] = sum(r.usage_metadata["input_tokens"] for r in replies)
        print(f"== {label} ({tokens[label]} prompt tokens for {len(rows)} calls)")
        for reply in replies:
            print(f"  parses as JSON: {parses(reply.content)!s:5}  {reply.content!r}")
        print(f"  steering: {replies[0].response_metadata['steering']['expression']}")
    saved = tokens["system prompt"] - tokens["json steering"]
    print(f"prompt tokens saved by steering: {saved} ({saved / len(rows):.0f} per call)")
    print(
        "note: SmolLM2's chat template adds its own default system prompt when none is given, "
        "so the saving shown is the difference between the two system prompts"
    )


if __name__ == "__main__":
    main()
