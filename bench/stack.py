"""A distilled vector on top of the prompt it replaces, and what its coefficient dial does.

For each distilled preset on the embedded model, on held-out prompts never used to build or
choose it (the 48 held-out neutral messages; for ``no-disclaimer`` the 50 held-out personal
questions), greedy replies of ``--max-new-tokens`` are judged by the preset's check under:
no steering, the system prompt, the vector at 0.5x / 1x / 2x, and the prompt plus the vector at
the same coefficients. Teacher-forced on the prompted model's own replies, it also measures the
vector's fidelity (the share of the prompt's KL it removes) and KL(prompt || prompt + vector),
what the vector changes on top of its prompt (0 for a harmless vector).

``--baseline DIR`` adds the vectors in DIR (``NAME.safetensors``: for instance the ones shipped
before stack-safe training, ``git show 105cb4a:actsteer/presets/vectors/NAME.safetensors``) as
"baseline" rows, alone and on top of the prompt. For ``no-disclaimer`` the mean-difference
vector it used to be runs next to it. Writes bench/results/stack.json and stack.png.
Run: ``.venv/bin/python bench/stack.py [--presets json,french] [--baseline DIR]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interval, machine, save_plot, write

from actsteer import SteeredModel, Steering, SteeringVector, presets
from actsteer.data import neutral_inputs, personal_questions
from actsteer.evaluate.checks import judge
from actsteer.train import extract as ex
from actsteer.train.distill.fidelity import fidelity_of
from actsteer.train.distill.loop import stacked
from actsteer.train.distill.teacher import chats, teacher_examples

COEFFS = (0.5, 1.0, 2.0)
EXTRA_CHECKS = {"json": ("json-extract",)}

#: The ``no-disclaimer`` preset before it was distilled: a mean difference over these pairs
#: at 25-30 % depth, each layer's unit direction times 0.15 of its typical norm.
DISCLAIMER_PAIRS = [
    (
        "Sure. The capital of France is Paris.",
        "As an AI language model, I cannot be sure, but the capital of France is Paris.",
    ),
    (
        "Here is a simple recipe for pancakes.",
        "As an AI, I don't eat, but here is a recipe for pancakes.",
    ),
    (
        "Rain forms when water vapour condenses.",
        "As a language model, I have no senses, but rain forms when vapour condenses.",
    ),
    (
        "My favourite season is autumn, for its colours.",
        "As an AI language model, I do not have personal preferences or favourite seasons.",
    ),
    (
        "Try stretching for ten minutes each morning.",
        "I am just an AI and cannot give advice, but stretching may help.",
    ),
    (
        "The movie is a thoughtful story about family.",
        "As an AI, I have not watched movies, but it is said to be about family.",
    ),
    (
        "Yes, you can freeze bread for a month.",
        "As an artificial intelligence, I must note I am not an expert; bread can be frozen.",
    ),
    (
        "A good name for a goldfish is Bubbles.",
        "As an AI language model, I don't have opinions, but a name could be Bubbles.",
    ),
]


def old_no_disclaimer(sm: SteeredModel) -> SteeringVector:
    """The mean-difference ``no-disclaimer`` vector the distilled preset replaced."""
    lo, hi = (round(f * (sm.num_layers - 1)) for f in (0.25, 0.3))
    layers = list(range(lo, hi + 1))
    vec = ex.mean_diff(sm, DISCLAIMER_PAIRS, layers, read="mean", progress=False)
    norms = sm.activation_norms()
    return SteeringVector(
        {x: d / d.norm() * norms[x] * 0.15 for x, d in vec.directions.items()}, vec.meta
    )


def run(sm: SteeredModel, name: str, baseline: Path | None, max_new_tokens: int) -> dict:
    preset = presets.get(name)
    prompt = preset.system_prompt or ""
    held_out = (
        personal_questions("heldout") if name == "no-disclaimer" else neutral_inputs("heldout")
    )
    with_prompt, without = chats(prompt, held_out, template=False)
    vec = sm.preset(name)
    vectors: dict[str, SteeringVector] = {f"{c:g}x": vec * c for c in COEFFS}
    if baseline is not None and (baseline / f"{name}.safetensors").is_file():
        old = SteeringVector.load(baseline / f"{name}.safetensors", model=sm.fingerprint)
        vectors["baseline"] = old.select(preset.layer_indices(sm.num_layers))
    if name == "no-disclaimer":
        vectors["mean-difference"] = old_no_disclaimer(sm)

    conditions: dict[str, tuple[list, object]] = {
        "none": (without, None),
        "prompt": (with_prompt, None),
    }
    for label, v in vectors.items():
        conditions[f"vector {label}"] = (without, Steering(v))
        conditions[f"prompt + vector {label}"] = (with_prompt, Steering(v))
    out: dict = {"prompt": prompt, "prompts": len(held_out), "conditions": {}}
    examples = teacher_examples(sm, prompt, held_out, max_new_tokens=max_new_tokens, top_k=1)
    on_top = stacked(examples)
    for cond, (rows, steering) in conditions.items():
        start = time.perf_counter()
        gens = sm.generate_batch_detailed(
            rows, [steering] * len(rows), max_new_tokens=max_new_tokens
        )
        passed = [judge(preset.check, g.text, g.finish_reason).passed for g in gens]
        also = {  # json: SmolLM2 rarely writes a whole-reply object; count any object found too
            c: sum(judge(c, g.text, g.finish_reason).passed for g in gens)
            for c in EXTRA_CHECKS.get(name, ())
        }
        k = sum(passed)
        entry = {
            "passed": k,
            "n": len(passed),
            "rate": k / len(passed),
            "interval95": interval(k, len(passed)),
            "per_prompt": passed,
            "other_checks": also,
            "seconds": round(time.perf_counter() - start, 1),
            "example": gens[0].text[:160],
        }
        if steering is not None:
            row = sm.row_spec(steering)[0]
            if cond.startswith("vector"):
                fid = fidelity_of(sm, examples, row)
                entry.update(fidelity=fid.removed, kl=fid.kl_vector, kl_none=fid.kl_none)
            else:
                entry["kl_on_top"] = fidelity_of(sm, on_top, row).kl_vector
        out["conditions"][cond] = entry
        print(f"{name:14s} {cond:28s} {k:3d}/{len(passed)} {also}", flush=True)
    prompt_pass = out["conditions"]["prompt"]["per_prompt"]
    for cond, entry in out["conditions"].items():
        if cond.startswith("prompt + "):
            entry["worse_than_prompt"] = sum(
                a and not b for a, b in zip(prompt_pass, entry["per_prompt"])
            )
            entry["better_than_prompt"] = sum(
                b and not a for a, b in zip(prompt_pass, entry["per_prompt"])
            )
    del examples
    return out


def plot(results: dict) -> Path:
    import matplotlib.pyplot as plt

    names = list(results["presets"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        conds = results["presets"][name]["conditions"]
        labels = list(conds)
        rates = [conds[c]["rate"] for c in labels]
        lows = [conds[c]["rate"] - conds[c]["interval95"][0] for c in labels]
        highs = [conds[c]["interval95"][1] - conds[c]["rate"] for c in labels]
        colours = [
            "#999"
            if c == "none"
            else "#48a"
            if c == "prompt"
            else "#d84"
            if c.startswith("prompt + ")
            else "#6a6"
            for c in labels
        ]
        ax.barh(range(len(labels)), rates, xerr=[lows, highs], color=colours)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("check pass rate (95 % interval)", fontsize=7)
    fig.suptitle("distilled vectors on top of their own prompt (SmolLM2-135M, held-out)")
    return save_plot(fig, "stack.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=None, help="comma-separated (default: distilled)")
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    names = (
        args.presets.split(",")
        if args.presets
        else [p.name for p in presets.list_presets() if p.method == "distill"]
    )
    sm = SteeredModel.default()
    results = {"machine": machine(), "max_new_tokens": args.max_new_tokens, "presets": {}}
    for name in names:
        results["presets"][name] = run(sm, name, args.baseline, args.max_new_tokens)
    print("wrote", write("stack", results), plot(results))


if __name__ == "__main__":
    main()
