"""IFEval judges prompt-template vectors: Google's own instruction checkers (``if-verifiable``).

For each IFEval instruction (default: ``actsteer.evaluate.ifeval.BENCH_INSTRUCTIONS``, ten of
them), IFEval's own wording of it is the system prompt; ``extract.distill`` compiles it into a
vector on the embedded model with its default settings, as a user would (200 shipped neutral
messages; the vector is cached under ``--vectors`` so a rerun skips training). Greedy replies of
``--max-new-tokens`` to ``--requests`` held-out user messages (``neutral_inputs("eval")`` past
the 48 that distillation's test set uses: never used to build or choose anything) are judged by
IFEval's checker, strict and loose, under four conditions: no steering, the system prompt, the
vector alone, and the prompt plus the vector. Fidelity is the training card's held-out one.

Writes bench/results/ifeval.json and ifeval.png (after each instruction, so an interrupted run
keeps what it measured). ``--model ID`` runs another Hugging Face model (where a hub or a local
copy is at hand) and writes ifeval_<name>.json / .png instead.
Run: ``.venv/bin/python bench/ifeval.py [--instructions a,b] [--model Qwen/Qwen2.5-0.5B-Instruct]``
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interval, machine, save_plot, write

from actsteer import SteeredModel, Steering, SteeringVector
from actsteer.core.distill_config import DistillConfig
from actsteer.data import HELD_OUT, neutral_inputs
from actsteer.default_model import cache_root
from actsteer.evaluate import ifeval
from actsteer.train import extract as ex
from actsteer.train.distill.teacher import chats

CONDITIONS = ("none", "prompt", "vector", "prompt + vector")


def vector_for(sm: SteeredModel, rule: ifeval.Instruction, folder: Path) -> SteeringVector:
    """The distilled vector of ``rule``'s text, from ``folder`` when it was made before."""
    settings = json.dumps(dataclasses.asdict(DistillConfig()), sort_keys=True)  # defaults
    blob = f"{sm.fingerprint.to_dict()}\n{settings}\n{rule.text}"
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    path = folder / f"{rule.id.replace(':', '-')}-{key}.safetensors"
    if path.is_file():
        return SteeringVector.load(path, model=sm.fingerprint)
    vec = ex.distill(sm, rule.text, progress=True)
    folder.mkdir(parents=True, exist_ok=True)
    vec.save(path)
    return vec


def run(
    sm: SteeredModel,
    rule: ifeval.Instruction,
    vec: SteeringVector,
    requests: list[str],
    max_new_tokens: int,
) -> dict:
    with_prompt, without = chats(rule.text, requests, template=False)
    card = vec.meta.extra["training"]
    rows = {
        "none": (without, None),
        "prompt": (with_prompt, None),
        "vector": (without, Steering(vec)),
        "prompt + vector": (with_prompt, Steering(vec)),
    }
    out: dict = {
        "system_prompt": rule.text,
        "args": dict(rule.args),
        "fidelity": card["test_fidelity"],
        "stack_kl": card["test_stack_kl"],
        "kl_none": card["test_kl_none"],
        "distill_s": card["time_s"],
        "coeff": card["coeff"],
        "coeff_dev_kl": card["coeff_dev_kl"],
        "coeff_dev_stack_kl": card.get("coeff_dev_stack_kl"),
        "prompt_tokens_saved": vec.meta.source.get("prompt_tokens_saved"),
        "conditions": {},
    }
    for cond, (prompts, steering) in rows.items():
        start = time.perf_counter()
        gens = sm.generate_batch_detailed(
            prompts, [steering] * len(prompts), max_new_tokens=max_new_tokens
        )
        verdicts = [rule.judge(g.text) for g in gens]
        strict = [s for s, _ in verdicts]
        loose = [lo for _, lo in verdicts]
        n = len(gens)
        out["conditions"][cond] = {
            "strict": sum(strict),
            "loose": sum(loose),
            "n": n,
            "strict_interval95": interval(sum(strict), n),
            "loose_interval95": interval(sum(loose), n),
            "cut_by_cap": sum(g.finish_reason == "length" for g in gens),
            "per_request_strict": strict,
            "per_request_loose": loose,
            "seconds": round(time.perf_counter() - start, 1),
            "example": gens[0].text[:200],
        }
        print(
            f"{rule.id:48s} {cond:16s} strict {sum(strict):3d}/{n} loose {sum(loose):3d}/{n}",
            flush=True,
        )
    prompt = out["conditions"]["prompt"]
    both = out["conditions"]["prompt + vector"]
    out["both_worse_than_prompt"] = sum(
        a and not b for a, b in zip(prompt["per_request_strict"], both["per_request_strict"])
    )
    out["both_better_than_prompt"] = sum(
        b and not a for a, b in zip(prompt["per_request_strict"], both["per_request_strict"])
    )
    return out


def verdicts(results: dict) -> dict:
    """The issue's targets, read off the results (strict verdicts)."""
    rules = results["instructions"]
    stack_ok, vector_ok = {}, {}
    for rid, r in rules.items():
        c = r["conditions"]
        p, b, v = (c[k]["strict"] for k in ("prompt", "prompt + vector", "vector"))
        n = c["prompt"]["n"]
        low = c["prompt"]["strict_interval95"][0] * n
        stack_ok[rid] = b >= p - max(1, n // 100) or b >= low
        if p >= 0.2 * n:
            vector_ok[rid] = v >= 0.9 * p
    followed = [rid for rid in vector_ok]
    fids = [rules[rid]["fidelity"] for rid in rules]
    return {
        "prompt_plus_vector_not_worse": stack_ok,
        "vector_at_least_0.9x_prompt (prompt >= 20 %)": vector_ok,
        "mean_fidelity": sum(fids) / len(fids) if fids else None,
        "instructions_the_prompt_passes_20pct": followed,
    }


def plot(results: dict, stem: str = "ifeval") -> Path:
    import matplotlib.pyplot as plt

    ids = list(results["instructions"])
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(ids) + 1.5))
    colours = {"none": "#999", "prompt": "#48a", "vector": "#6a6", "prompt + vector": "#d84"}
    height = 0.8 / len(CONDITIONS)
    for k, cond in enumerate(CONDITIONS):
        rates, lows, highs = [], [], []
        for rid in ids:
            c = results["instructions"][rid]["conditions"][cond]
            rate = c["strict"] / c["n"]
            rates.append(rate)
            lows.append(rate - c["strict_interval95"][0])
            highs.append(c["strict_interval95"][1] - rate)
        ys = [i + k * height for i in range(len(ids))]
        ax.barh(
            ys,
            rates,
            height,
            xerr=[lows, highs],
            color=colours[cond],
            label=cond,
            error_kw={"lw": 0.6},
        )
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(ids))], ids, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IFEval strict pass rate (95 % interval)")
    ax.legend(fontsize=8, loc="lower right")
    n = next(iter(results["instructions"].values()))["conditions"]["none"]["n"] if ids else 0
    ax.set_title(
        f"IFEval instructions as system prompt vs distilled vector ({results['model']}, {n} "
        "held-out requests)",
        fontsize=10,
    )
    return save_plot(fig, f"{stem}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", default=",".join(ifeval.BENCH_INSTRUCTIONS))
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--vectors", type=Path, default=cache_root() / "ifeval")
    parser.add_argument("--model", default=None, help="Hugging Face id or path (default: embedded)")
    args = parser.parse_args()
    rules = [ifeval.instruction(i) for i in args.instructions.split(",")]  # fail before work
    requests = neutral_inputs("eval")[HELD_OUT:][: args.requests]
    if len(requests) < args.requests:
        sys.exit(f"only {len(requests)} held-out requests ship; asked for {args.requests}")
    sm = SteeredModel.from_pretrained(args.model) if args.model else SteeredModel.default()
    stem = "ifeval"
    if args.model:
        name = args.model.rstrip("/").rsplit("/", 1)[-1]
        stem += "_" + "".join(c if c.isalnum() else "-" for c in name)
    results: dict = {
        "machine": machine(),
        "model": sm.fingerprint.name,
        "requests": len(requests),
        "max_new_tokens": args.max_new_tokens,
        "instructions": {},
    }
    for rule in rules:
        vec = vector_for(sm, rule, args.vectors)
        results["instructions"][rule.id] = run(sm, rule, vec, requests, args.max_new_tokens)
        results["verdicts"] = verdicts(results)
        write(stem, results)
        plot(results, stem)
    print(table(results))
    print(f"wrote bench/results/{stem}.json and {stem}.png")


def table(results: dict) -> str:
    """The README table: strict (loose) passes per condition, fidelity, stacking."""
    n = results["requests"]
    lines = [
        "| IFEval instruction | none | prompt | vector | prompt + vector | fidelity |",
        "|---|---|---|---|---|---|",
    ]
    for rid, r in results["instructions"].items():
        c = r["conditions"]
        cells = [f"{c[k]['strict']} ({c[k]['loose']})" for k in CONDITIONS]
        lines.append(f"| `{rid}` | " + " | ".join(cells) + f" | {r['fidelity']:.2f} |")
    lines.append(f"\nStrict (loose) passes of {n} held-out requests.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
