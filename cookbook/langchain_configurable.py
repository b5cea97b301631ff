"""One chain, steering switched per invocation through ``config`` - the chain-level knob.

``chat.configurable_fields(steering=ConfigurableField(id="format_steering"))`` turns the steering
into a run-time option of any chain that contains the model: each ``invoke`` (or each row of a
``batch``) picks its own steering with ``config={"configurable": {"format_steering": ...}}``.
Rows with different steering still run as one batched generate. ``configurable_alternatives``
does the same with named, ready-made ``with_steering`` copies.

Run: ``python cookbook/langchain_configurable.py [--max-tokens N]``
"""

from __future__ import annotations

import argparse
import os

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField

from langchain_steer import ChatSteer

SETTINGS = [None, "love:2", "dogs", "formal"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = int(os.environ.get("ACTSTEER_COOKBOOK_MAX_TOKENS", "32"))
    parser.add_argument("--max-tokens", type=int, default=default, help="new tokens per reply")
    args = parser.parse_args()

    chat = ChatSteer(max_tokens=args.max_tokens)
    knob = chat.configurable_fields(
        steering=ConfigurableField(
            id="format_steering",
            name="Steering",
            description="Steering expression for this run, e.g. 'love:2' or 'formal'",
        )
    )
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    chain = prompt | knob | StrOutputParser()
    question = {"question": "Describe your ideal afternoon."}

    print("== per invocation")
    for steering in SETTINGS:
        config = {"configurable": {"format_steering": steering}}
        print(f"  {steering!s:8} -> {chain.invoke(question, config=config)!r}")

    print("== one batch, a different steering per row (one batched generate)")
    configs = [{"configurable": {"format_steering": s}} for s in SETTINGS]
    for steering, text in zip(SETTINGS, chain.batch([question] * len(SETTINGS), configs)):
        print(f"  {steering!s:8} -> {text!r}")

    print("== named alternatives")
    styles = chat.configurable_alternatives(
        ConfigurableField(id="style"),
        default_key="plain",
        warm=chat.with_steering("love:2"),
        doggy=chat.with_steering("dogs"),
    )
    styled = prompt | styles | StrOutputParser()
    for style in ("plain", "warm", "doggy"):
        text = styled.invoke(question, config={"configurable": {"style": style}})
        print(f"  {style:8} -> {text!r}")


if __name__ == "__main__":
    main()
