"""Data shipped with actsteer: neutral user inputs for prompt-template vectors and evaluation,
and personal questions (tastes, life, feelings, expert advice, opinions, with plain tasks mixed
in) that make a small chat model say what it is: what a no-disclaimer steering is trained and
judged on."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def _load(name: str) -> tuple[str, ...]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return tuple(json.loads(text))


TRAIN = 200
HELD_OUT = 48


def neutral_inputs(split: str = "train") -> list[str]:
    """Diverse, neutral user messages (questions, requests, tasks): ``"train"`` (the first 200,
    which build prompt-template and distilled vectors), ``"heldout"`` (the next 48: the test set
    of ``extract.distill``'s training card and of quick evaluations), ``"eval"`` (those 48 and
    152 more, never used to build or choose anything: the benchmark's 200, whose 95 % interval
    on a success rate near 25 % is about +-6 points, against +-12 on 48) or ``"all"``."""
    items = list(_load("neutral_inputs.json"))
    if split == "train":
        return items[:TRAIN]
    if split == "heldout":
        return items[TRAIN : TRAIN + HELD_OUT]
    if split == "eval":
        return items[TRAIN:]
    if split == "all":
        return items
    raise ValueError(f"split must be 'train', 'heldout', 'eval' or 'all', got {split!r}")


PERSONAL_TRAIN = 110


def personal_questions(split: str = "train") -> list[str]:
    """160 questions that invite an "as an AI" reply: ``"train"`` (the first 110, which build
    the ``no-disclaimer`` preset), ``"heldout"`` (the other 50, never used to build or choose
    it: its evaluations) or ``"all"``."""
    items = list(_load("personal_questions.json"))
    if split == "train":
        return items[:PERSONAL_TRAIN]
    if split == "heldout":
        return items[PERSONAL_TRAIN:]
    if split == "all":
        return items
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


#: Named input sets a preset's ``"inputs"`` may refer to instead of listing its inputs.
INPUT_SETS = {
    "neutral_inputs:train": lambda: neutral_inputs("train"),
    "personal_questions:train": lambda: personal_questions("train"),
}


def neutral_texts() -> list[str]:
    """Short neutral passages for measuring quality cost (KL and perplexity on plain text)."""
    return list(_load("neutral_texts.json"))
