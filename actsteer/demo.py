"""``actsteer demo``: what steering does, side by side, on the embedded model.

For a handful of user messages it compares: no steering; a system prompt; the same system prompt
distilled into vectors (no prompt tokens sent); and two contrastive vectors (Love−Hate and
dogs). Each call is timed and its prompt tokens counted.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

from . import presets
from .runtime.model import SteeredModel

PROMPTS = [
    "Tell me about your weekend.",
    "What do you think of my neighbour?",
    "Describe a walk in the park.",
]
TEMPLATE_PRESET = "friendly"


def conditions(sm: SteeredModel) -> list[tuple[str, str | None, str | None]]:
    """``(label, system prompt, steering expression)`` for each column of the demo."""
    system = presets.get(TEMPLATE_PRESET).system_prompt
    return [
        ("unsteered", None, None),
        ("system prompt", system, None),
        ("template vector", None, TEMPLATE_PRESET),
        ("love (Love-Hate)", None, "love"),
        ("dogs", None, "dogs"),
    ]


def run_demo(
    sm: SteeredModel, *, max_new_tokens: int = 40, quiet: bool = False, width: int = 100
) -> dict[str, Any]:
    """Run every condition on every prompt (one call each, timed); print unless ``quiet``."""
    say = (lambda *a, **k: None) if quiet else print
    say(f"Model: {sm!r}")
    start = time.perf_counter()
    for name in (TEMPLATE_PRESET, "love", "dogs"):
        sm.preset(name)  # extracted once per model, then cached on disk
    say(
        f"Preset vectors ready in {time.perf_counter() - start:.1f} s "
        "(extracted on first use, then read from the cache)."
    )
    system = presets.get(TEMPLATE_PRESET).system_prompt
    say(f'System prompt of the "{TEMPLATE_PRESET}" preset: "{system}"')
    results: list[dict[str, Any]] = []
    for prompt in PROMPTS:
        say(f"\n=== {prompt}")
        for label, system_prompt, steer in conditions(sm):
            messages = [{"role": "user", "content": prompt}]
            if system_prompt:
                messages.insert(0, {"role": "system", "content": system_prompt})
            t0 = time.perf_counter()
            g = sm.generate_detailed(messages, steer, max_new_tokens=max_new_tokens)
            took = time.perf_counter() - t0
            results.append(
                {
                    "prompt": prompt,
                    "condition": label,
                    "steering": steer,
                    "text": g.text,
                    "prompt_tokens": g.prompt_tokens,
                    "completion_tokens": g.completion_tokens,
                    "seconds": round(took, 3),
                }
            )
            head = f"  {label:<17} {g.prompt_tokens:>3} tok {took:4.1f}s  "
            body = " ".join(g.text.split()) or "(empty)"
            say(textwrap.fill(body, width, initial_indent=head, subsequent_indent=" " * len(head)))
    summary = {}
    for label, _, _ in conditions(sm):
        rows = [r for r in results if r["condition"] == label]
        summary[label] = {
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows) / len(rows),
            "seconds_per_call": sum(r["seconds"] for r in rows) / len(rows),
        }
    say("\n  condition         prompt tokens  s/call")
    for label, s in summary.items():
        say(f"  {label:<17} {s['prompt_tokens']:>13.1f}  {s['seconds_per_call']:6.2f}")
    saved = summary["system prompt"]["prompt_tokens"] - summary["template vector"]["prompt_tokens"]
    say()
    say(
        textwrap.fill(
            "What you are seeing: one small model, the same user messages. The system "
            f"prompt costs {saved:.0f} extra prompt tokens on every call (SmolLM2's chat template "
            "sends its own short default system prompt when none is given, so the saving here is "
            "the difference; a long production system prompt saves far more); the template "
            "vector is that system prompt distilled into one small vector per layer, trained so "
            "that the model without the prompt predicts what it predicts with it, so those "
            "tokens are never sent. Love-Hate and dogs are "
            "contrastive vectors: the difference between activations for opposite example "
            "sentences, which shifts tone or topic without any instruction. A model this small "
            "follows instructions loosely, so compare the columns for tone and topic rather than "
            "exact wording.",
            width,
        )
    )
    return {
        "model": sm.fingerprint.name,
        "results": results,
        "summary": summary,
        "template_preset": TEMPLATE_PRESET,
    }
