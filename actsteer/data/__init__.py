"""Data shipped with actsteer: neutral user inputs for prompt-template vectors and evaluation."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def _load(name: str) -> tuple[str, ...]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return tuple(json.loads(text))


HELD_OUT = 48


def neutral_inputs(split: str = "train") -> list[str]:
    """Diverse, neutral user messages (questions, requests, tasks): ``"train"`` (the first 200,
    which build prompt-template and distilled vectors), ``"heldout"`` (the last 48, used only to
    evaluate; the 16 first of them were the whole held-out set until distillation came) or
    ``"all"``."""
    items = list(_load("neutral_inputs.json"))
    if split == "train":
        return items[:-HELD_OUT]
    if split == "heldout":
        return items[-HELD_OUT:]
    if split == "all":
        return items
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


def neutral_texts() -> list[str]:
    """Short neutral passages for measuring quality cost (KL and perplexity on plain text)."""
    return list(_load("neutral_texts.json"))
