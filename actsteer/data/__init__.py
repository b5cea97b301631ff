"""Data shipped with actsteer: neutral user inputs for prompt-template vectors and evaluation."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def _load(name: str) -> tuple[str, ...]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return tuple(json.loads(text))


def neutral_inputs() -> list[str]:
    """72 diverse, neutral user messages (questions, requests, tasks) used to average a
    prompt-template vector over many inputs; evaluation holds out the last 16."""
    return list(_load("neutral_inputs.json"))
