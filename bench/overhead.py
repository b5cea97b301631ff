"""Decode throughput with actsteer's hooks, measured side by side in one process.

Conditions, interleaved round by round on the embedded model (batch 1, fixed token count):
  (a) the same model object with actsteer's hooks removed (so memory layout is identical)
  (b) actsteer's hooks installed, no steering
  (c) one vector on 5 layers
  (d) three vectors combined on 5 layers (one with positions="generated")
A second, much less noisy measurement times the hook code itself on a decode-sized hidden state
and divides by the measured decode step time: the share of each step spent in actsteer.
Writes bench/results/overhead.json and overhead.png. Run: ``make bench`` or
``.venv/bin/python bench/overhead.py [--rounds N] [--tokens N]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, save_plot, summary, write

from actsteer import SteeredModel, Steering, presets
from actsteer.apply import hooks
from actsteer.runtime import worker
from actsteer.train.extract import mean_diff

PROMPT = "Once upon a time, in a small village by the sea, there lived"  # no early EOS in 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    sm = SteeredModel.default(progress=False)
    layers = [4, 5, 6, 7, 8]
    love = mean_diff(sm, list(presets.get("love").pairs), layers)
    formal = mean_diff(
        sm, [("Dear Sir, I write to inform you.", "hey dude, just so u know")], layers
    )
    short = mean_diff(
        sm, [("Yes.", "Well, let me think about that for a while, and then.")], layers
    )
    conditions = {
        "a_no_hooks": None,
        "b_hooks_idle": None,
        "c_one_vector_5_layers": Steering(love, 2.0),
        "d_three_vectors": [
            Steering([(love, 2.0), (formal, 1.0)]),
            Steering(short, 1.0, positions="generated"),
        ],
        # the engine's own decode loop (continuous batching) vs its whole-batch HF generate,
        # one unsteered call each: what a single `invoke` runs
        "e_engine_continuous_loop": None,
        "f_engine_hf_generate": None,
    }
    ids = torch.tensor([sm.encode(PROMPT)])
    mask = torch.ones_like(ids)
    gen = {
        "max_new_tokens": args.tokens,
        "min_new_tokens": args.tokens,
        "do_sample": False,
        "pad_token_id": sm.pad_token_id,
    }

    def engine_call(name: str) -> float:
        sm.engine.joining = name == "e_engine_continuous_loop"
        try:
            start = time.perf_counter()
            g = sm.generate_detailed(PROMPT, None, max_new_tokens=args.tokens)
            took = time.perf_counter() - start
        finally:
            sm.engine.joining = True
        assert g.completion_tokens == args.tokens, "the reply ended early: pick another prompt"
        return args.tokens / took

    def run(name: str) -> float:
        if name.startswith(("e_", "f_")):
            return engine_call(name)
        steering = conditions[name]
        if name == "a_no_hooks":
            sm.close()

        def generate() -> torch.Tensor:
            with torch.inference_mode():
                if steering is None:
                    return sm.model.generate(input_ids=ids, attention_mask=mask, **gen)
                with sm.steer(steering):
                    return sm.model.generate(input_ids=ids, attention_mask=mask, **gen)

        start = time.perf_counter()
        # on actsteer's generation thread, like every actsteer forward pass: one OpenMP team
        out = worker.call(generate)
        took = time.perf_counter() - start
        if name == "a_no_hooks":
            sm.handle.reinstall()
        assert out.shape[1] - ids.shape[1] == args.tokens
        return args.tokens / took

    for name in conditions:  # warm-up
        run(name)
    samples: dict[str, list[float]] = {name: [] for name in conditions}
    for r in range(args.rounds):
        order = list(conditions)
        random.Random(r).shuffle(order)
        for name in order:
            samples[name].append(run(name))
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n}={samples[n][-1]:.1f}" for n in conditions),
            flush=True,
        )

    stats = {name: summary(s) for name, s in samples.items()}
    step_s = 1.0 / stats["a_no_hooks"]["median"]
    hook_cost = {
        name: hook_seconds_per_step(sm, conditions[name]) / step_s
        for name in conditions
        if name != "a_no_hooks"
    }
    base = stats["a_no_hooks"]["median"]
    ratios = {name: stats[name]["median"] / base for name in conditions}
    # paired ratio per round (same round, adjacent runs) is less sensitive to drift
    paired = {
        name: summary([x / a for x, a in zip(samples[name], samples["a_no_hooks"])])["median"]
        for name in conditions
    }
    result = {
        "benchmark": "overhead",
        "model": sm.fingerprint.name,
        "prompt_tokens": ids.shape[1],
        "new_tokens": args.tokens,
        "rounds": args.rounds,
        "machine": machine(),
        "tokens_per_s": stats,
        "ratio_vs_no_hooks_of_medians": ratios,
        "ratio_vs_no_hooks_paired_median": paired,
        "hook_time_share_of_decode_step": hook_cost,
        "ratio_implied_by_hook_time": {n: 1.0 / (1.0 + c) for n, c in hook_cost.items()},
        "targets": {"b_hooks_idle": 0.995, "c_one_vector_5_layers": 0.99},
    }
    path = write("overhead", result)
    plot(stats, ratios)
    print(f"\nwrote {path}")
    for name in conditions:
        share = hook_cost.get(name, 0.0)
        print(
            f"  {name:<24} {stats[name]['median']:7.2f} tok/s  ratio {ratios[name]:.4f} "
            f"(paired {paired[name]:.4f}); hooks take {100 * share:.3f}% of a decode step"
        )


def hook_seconds_per_step(sm: SteeredModel, steering, reps: int = 2000) -> float:
    """Time actsteer's own code for one decode step: the stack pre-hook plus every layer hook,
    called directly on a (1, 1, hidden) state, as generate() calls them."""
    plan = sm.plan([steering]) if steering is not None else None
    state = hooks.CallState(plan) if plan is not None else None
    if state is not None:
        state.prompt_len = 16
    h = torch.randn(1, 1, sm.hidden_size)
    layer_hooks = [hooks._make_layer_hook(i) for i in range(sm.num_layers)]
    mask = torch.ones(1, 17, dtype=torch.long)
    kwargs = {"input_ids": torch.zeros(1, 1, dtype=torch.long), "attention_mask": mask}
    with torch.inference_mode(), hooks.activate(state):
        start = time.perf_counter()
        for _ in range(reps):
            hooks._stack_pre_hook(sm.stack, (), kwargs)
            for i, fn in enumerate(layer_hooks):
                out = fn(sm.layers[i], (h,), h)
                assert out is None or out.shape == h.shape
        return (time.perf_counter() - start) / reps


def plot(stats: dict, ratios: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    med = [stats[n]["median"] for n in names]
    err = [
        [stats[n]["median"] - stats[n]["min"] for n in names],
        [stats[n]["max"] - stats[n]["median"] for n in names],
    ]
    bars = ax.bar(
        names, med, yerr=err, capsize=4, color=["#888", "#4a7", "#47a", "#a74", "#3a7", "#999"]
    )
    for bar, n in zip(bars, names):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() * 0.5,
            f"{ratios[n]:.3f}x",
            ha="center",
            color="white",
            fontsize=10,
        )
    ax.set_ylabel("decode tokens/s (median, min-max)")
    ax.set_title("actsteer hook overhead, SmolLM2-135M, batch 1")
    ax.tick_params(axis="x", labelsize=8)
    save_plot(fig, "overhead.png")


if __name__ == "__main__":
    main()
