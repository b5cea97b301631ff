"""IFEval as an external judge: Google's own verifiable-instruction checkers, as packaged in
``if-verifiable`` (Apache-2.0), with no checker of ours in between.

An ``Instruction`` is one IFEval instruction with its arguments fixed: ``text`` is IFEval's own
wording of it (what a system prompt says, and what a vector is distilled from) and ``judge``
returns IFEval's strict and loose verdicts on a reply. ``get_check("ifeval:<id>")`` makes the
same verdict (strict) available wherever a behaviour check id is accepted.

Instructions whose checker needs data fetched at run time are refused: NLTK's punkt sentence
model (``length_constraints:number_sentences``) is a download, and a pickle, so it never runs
here. Everything else runs from the wheels: langdetect (seeded here, so a verdict is the same on
every run), ``nltk``'s regular-expression word tokenizer, ``immutabledict``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any

from ..errors import SteeringSpecError

#: Arguments for instructions whose IFEval checker draws missing arguments at random: fixed
#: here so that the same id always means the same instruction (and the same system prompt).
DEFAULT_ARGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "language:response_language": {"language": "fr"},
        "detectable_content:postscript": {"postscript_marker": "P.S."},
        "startend:end_checker": {"end_phrase": "Is there anything else I can help with?"},
        "detectable_format:number_highlighted_sections": {"num_highlights": 2},
        "detectable_format:number_bullet_lists": {"num_bullets": 3},
        "length_constraints:number_words": {"num_words": 50, "relation": "less than"},
        "length_constraints:number_paragraphs": {"num_paragraphs": 2},
        "detectable_content:number_placeholders": {"num_placeholders": 2},
        "detectable_format:multiple_sections": {"section_spliter": "Section", "num_sections": 2},
        "keywords:forbidden_words": {"forbidden_words": ["very", "really"]},
        "keywords:existence": {"keywords": ["example"]},
        "change_case:capital_word_frequency": {
            "capital_frequency": 3,
            "capital_relation": "at least",
        },
    }
)

#: The ten instructions the IFEval benchmark (``bench/ifeval.py``) runs by default.
BENCH_INSTRUCTIONS: tuple[str, ...] = (
    "change_case:english_lowercase",
    "change_case:english_capital",
    "punctuation:no_comma",
    "detectable_format:json_format",
    "detectable_format:title",
    "detectable_content:postscript",
    "startend:end_checker",
    "startend:quotation",
    "language:response_language",
    "detectable_format:number_highlighted_sections",
)

#: Checkers that would fetch (and unpickle) data at run time.
NEEDS_DOWNLOAD: Mapping[str, str] = MappingProxyType(
    {"length_constraints:number_sentences": "NLTK's punkt sentence model (a download and a pickle)"}
)

#: Checkers that judge a reply against the user's own request (IFEval passes them the prompt):
#: they are not instructions a system prompt can state once for every request.
NEEDS_REQUEST = frozenset({"combination:repeat_prompt"})


@cache
def _registry() -> Mapping[str, type]:
    try:
        registry = importlib.import_module("if_verifiable.ifeval.instructions_registry")
    except ImportError as exc:
        raise ImportError(
            "IFEval's checkers come with if-verifiable: pip install 'actsteer[ifeval]'"
        ) from exc
    langdetect = importlib.import_module("langdetect")
    langdetect.DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes verdicts stable
    return registry.INSTRUCTION_DICT


def instruction_ids() -> list[str]:
    """Every IFEval instruction id this package can judge (all of IFEval's registry but the
    checkers that need downloaded data or the user's own request)."""
    return sorted(set(_registry()) - set(NEEDS_DOWNLOAD) - NEEDS_REQUEST)


@dataclass(frozen=True)
class Instruction:
    """One IFEval instruction with fixed arguments. ``text`` is IFEval's own description of it."""

    id: str
    args: Mapping[str, Any] = field(default_factory=dict)
    text: str = ""

    def judge(self, reply: str) -> tuple[bool, bool]:
        """IFEval's (strict, loose) verdict on ``reply``: loose also accepts the reply without
        its first or last line, or without markdown asterisks (IFEval's own variants)."""
        common = importlib.import_module("if_verifiable.common")
        results, _ = common.evaluate_instructions(
            reply, [self.id], [dict(self.args)], "", _registry()
        )
        if not results:  # an empty reply follows no instruction
            return (False, False)
        return (results[0].strict_pass, results[0].loose_pass)


def instruction(instruction_id: str, **args: Any) -> Instruction:
    """IFEval instruction ``instruction_id`` (e.g. ``"punctuation:no_comma"``) with ``args``
    (default: ``DEFAULT_ARGS``), checked now: an unknown id, a checker that needs downloaded
    data, or arguments IFEval's checker rejects raise ``SteeringSpecError``."""
    registry = _registry()
    if not isinstance(instruction_id, str) or instruction_id not in registry:
        raise SteeringSpecError(
            f"unknown IFEval instruction {instruction_id!r}; known: {', '.join(instruction_ids())}"
        )
    if instruction_id in NEEDS_DOWNLOAD:
        raise SteeringSpecError(
            f"IFEval instruction {instruction_id!r} needs {NEEDS_DOWNLOAD[instruction_id]}, "
            "which actsteer never fetches at run time"
        )
    if instruction_id in NEEDS_REQUEST:
        raise SteeringSpecError(
            f"IFEval instruction {instruction_id!r} is judged against each user request, so it "
            "cannot be one system prompt"
        )
    args = dict(args or DEFAULT_ARGS.get(instruction_id, {}))
    checker = registry[instruction_id](instruction_id)
    try:
        text = checker.build_description(**args)
    except (TypeError, KeyError, ValueError) as exc:
        raise SteeringSpecError(
            f"IFEval instruction {instruction_id!r} rejects arguments {args!r}: {exc}"
        ) from exc
    drawn = {k: v for k, v in (checker.get_instruction_args() or {}).items() if k not in args}
    if drawn:  # IFEval fills a missing argument at random: the instruction would not be fixed
        raise SteeringSpecError(
            f"IFEval instruction {instruction_id!r} needs arguments {sorted(drawn)} (given: "
            f"{sorted(args)}); without them IFEval draws them at random"
        )
    return Instruction(instruction_id, MappingProxyType(args), text)
