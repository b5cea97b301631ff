"""The side-by-side evaluation on a tiny random model: each condition sends what a user of that
condition would send (a system prompt as a system message, a ``{input}`` template as the user
turn), and its numbers come from those replies."""

from __future__ import annotations

import math

from conftest import build_tiny, random_vector

from actsteer.evaluate.report import evaluate, run_condition

PROMPTS = ["Name a colour.", "What is two plus two?", "Say hi."]


def _condition(sm, system_prompt, steering=None):
    return run_condition(
        sm,
        "c",
        PROMPTS,
        system_prompt=system_prompt,
        steering=steering,
        check="concise",
        max_new_tokens=5,
        timed=1,
    )


def test_a_template_fills_the_user_turn_and_a_system_prompt_is_a_system_message():
    sm = build_tiny("llama", seed=4)
    _, replies = _condition(sm, "Translate to French: {input}")
    filled = [[{"role": "user", "content": f"Translate to French: {p}"}] for p in PROMPTS]
    assert replies == sm.generate_batch(filled, max_new_tokens=5)

    _, replies = _condition(sm, "Be brief.")
    chats = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}]
        for p in PROMPTS
    ]
    assert replies == sm.generate_batch(chats, max_new_tokens=5)

    cond, replies = _condition(sm, None)
    plain = [[{"role": "user", "content": p}] for p in PROMPTS]
    assert replies == sm.generate_batch(plain, max_new_tokens=5)
    assert cond.prompt_tokens == sum(len(sm.encode(c)) for c in plain) / len(plain)


def test_evaluate_reports_the_four_conditions_and_the_fidelity():
    sm = build_tiny("llama", seed=4)
    vec = random_vector(sm, [1, 2], scale=4.0)
    report = evaluate(
        sm, vec, check="concise", instruction="Be brief.", prompts=PROMPTS, max_new_tokens=5
    )
    names = [c.name for c in report.conditions]
    assert names == ["no steering", "system prompt", "vector", "vector + system prompt"]
    assert report.conditions[0].ppl_ratio == 1.0
    for c in report.conditions:
        assert 0.0 <= c.success_rate <= 1.0 and math.isfinite(c.perplexity), c
    # the system prompt costs prompt tokens; the vector costs none
    assert report.conditions[1].prompt_tokens > report.conditions[2].prompt_tokens
    assert report.conditions[2].prompt_tokens == report.conditions[0].prompt_tokens
    assert report.fidelity is not None and report.fidelity.inputs == len(PROMPTS)
