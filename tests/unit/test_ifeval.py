"""IFEval's own checkers (if-verifiable) as actsteer's external judge: known replies get IFEval's
verdicts, and a bad instruction is a clear error before any work."""

from __future__ import annotations

import pytest

from actsteer import SteeringSpecError
from actsteer.evaluate import ifeval
from actsteer.evaluate.checks import get_check, judge


@pytest.mark.parametrize(
    ("instruction_id", "reply", "strict", "loose"),
    [
        ("punctuation:no_comma", "Paris is the capital of France.", True, True),
        ("punctuation:no_comma", "Paris, the capital, is large.", False, False),
        ("change_case:english_lowercase", "paris is the capital of france.", True, True),
        ("change_case:english_lowercase", "Paris is the capital.", False, False),
        ("change_case:english_capital", "PARIS IS THE CAPITAL.", True, True),
        ("detectable_format:title", "<<Paris>>\nParis is the capital.", True, True),
        ("detectable_format:title", "Paris is the capital.", False, False),
        ("detectable_format:json_format", '```json\n{"city": "Paris"}\n```', True, True),
        ("detectable_format:json_format", 'Here it is: {"city": "Paris"}', False, False),
        ("startend:quotation", '"Paris is the capital."', True, True),
        ("detectable_content:postscript", "Paris.\nP.S. I love Paris.", True, True),
        ("detectable_content:postscript", "Paris.", False, False),
        # loose drops the first line (IFEval's own variants): "Sure!" before a lowercase reply
        ("change_case:english_lowercase", "Sure!\nparis is the capital.", False, True),
        ("startend:end_checker", "Paris. Is there anything else I can help with?", True, True),
        (
            "detectable_format:number_highlighted_sections",
            "*one* and *two* are highlighted.",
            True,
            True,
        ),
        (
            "language:response_language",
            "La capitale de la France est Paris, une très belle ville.",
            True,
            True,
        ),
        (
            "language:response_language",
            "The capital of France is Paris, a beautiful city.",
            False,
            False,
        ),
        ("punctuation:no_comma", "", False, False),
    ],
)
def test_ifeval_verdicts_on_known_replies(instruction_id, reply, strict, loose):
    assert ifeval.instruction(instruction_id).judge(reply) == (strict, loose)


def test_the_system_prompt_is_ifevals_own_wording_with_fixed_arguments():
    rule = ifeval.instruction("detectable_content:postscript")
    assert (
        rule.text
        == "At the end of your response, please explicitly add a postscript starting with P.S."
    )
    assert ifeval.instruction("detectable_content:postscript") == rule  # nothing drawn at random
    other = ifeval.instruction("language:response_language", language="de")
    assert "German" in other.text
    assert set(ifeval.BENCH_INSTRUCTIONS) <= set(ifeval.instruction_ids())


def test_an_ifeval_check_id_works_wherever_a_check_is_accepted():
    assert judge("ifeval:punctuation:no_comma", "no commas here").passed
    assert not get_check("ifeval:punctuation:no_comma")("a, b").passed


@pytest.mark.parametrize(
    ("instruction_id", "args", "message"),
    [
        ("punctuation:no_commas", {}, "unknown IFEval instruction 'punctuation:no_commas'"),
        ("", {}, "unknown IFEval instruction"),
        ("length_constraints:number_sentences", {}, "never fetches"),
        ("combination:repeat_prompt", {}, "judged against each user request"),
        ("keywords:frequency", {}, "without them IFEval draws them at random"),
        ("language:response_language", {"language": "xx"}, "rejects arguments"),
        ("punctuation:no_comma", {"colour": "red"}, "rejects arguments"),
    ],
)
def test_a_bad_ifeval_instruction_is_a_clear_error(instruction_id, args, message):
    with pytest.raises(SteeringSpecError, match=message):
        ifeval.instruction(instruction_id, **args)
    with pytest.raises(SteeringSpecError, match="unknown IFEval instruction"):
        get_check("ifeval:no_such_rule")
