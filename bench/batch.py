"""Mixed-steering throughput through LangChain: one batched generate vs one call at a time.

Sixteen chat requests, each with one of four steering settings, on the embedded model:
  (a) ceiling: the same 16 prompts, unsteered, in one plain batched ``generate``
  (b) ``ChatSteer`` batch: per-row steering via ``configurable_fields``, one batched generate
  (c) sequential ``ChatSteer.invoke`` calls
  (d) a serialized wrapper in the style of existing steering wrappers: take a global lock,
      register plain forward hooks that add the vector, generate one prompt, remove the hooks
      (run in a thread of its own, so that its OpenMP team does not outlive it)
  (e) ``ChatSteer`` abatch: the async path of (b)
  (f) ``asyncio.gather`` of 16 ``ainvoke`` calls, each with its own steering: actsteer's
      generation thread merges the calls that wait together (the first runs alone while the
      others queue, so expect two generates)
  (g) a thread pool of 16 ``invoke`` calls, each with its own steering: merged the same way
Outputs of (b) to (g) are checked equal (greedy decoding). Throughput counts generated
tokens per second; conditions are interleaved round by round. Because steered rows end (EOS) at
other lengths than unsteered ones, a batch's useful tokens per decode step differ between (a) and
(b); so the batched conditions also record decode steps per second (steps = the longest row),
which compares the per-step cost of mixed steering with the unsteered ceiling directly.
Writes bench/results/batch.json and batch.png.
Run: ``.venv/bin/python bench/batch.py [--rounds N] [--tokens N] [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, summary, write
from langchain_core.runnables import ConfigurableField

from actsteer import SteeredModel
from langchain_steer import ChatSteer

SETTINGS = [None, "love:2", "dogs", "formal"]
QUESTIONS = [
    "Describe your ideal afternoon.",
    "What do you like to do on weekends?",
    "Tell me about your favourite food.",
    "How would you spend a rainy day?",
    "What makes a good neighbour?",
    "Describe the view from your window.",
    "What is the best way to learn a language?",
    "Tell me about a place you would like to visit.",
]


class GlobalHookWrapper:
    """How wrappers that mutate the model steer: hooks installed around each call, so calls
    must be serialized (a lock) and a batch cannot mix steering."""

    def __init__(self, sm: SteeredModel, max_new_tokens: int) -> None:
        self.sm = sm
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()

    def deltas(self, steering: str | None) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        norms = self.sm.activation_norms()
        for s in self.sm.resolve(steering):
            assert s.operator == "add" and s.positions == "all"
            for layer, d in s.layer_deltas(self.sm.fingerprint, norms).items():
                out[layer] = out[layer] + d if layer in out else d
        return out

    def invoke(self, question: str, steering: str | None) -> tuple[str, int]:
        sm = self.sm
        ids = torch.tensor([sm.encode([{"role": "user", "content": question}])])
        with self.lock:
            handles = [
                sm.layers[layer].register_forward_hook(_adder(d))
                for layer, d in self.deltas(steering).items()
            ]
            try:
                with torch.inference_mode():
                    out = sm.model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        pad_token_id=sm.pad_token_id,
                    )
            finally:
                for h in handles:
                    h.remove()
        new = out[0, ids.shape[1] :].tolist()
        eos = set(sm.eos_token_ids)
        kept = next((new[:i] for i, t in enumerate(new) if t in eos), new)
        used = len(kept) + (1 if len(kept) < len(new) else 0)
        return sm.tokenizer.decode(kept, skip_special_tokens=True), used


def _adder(delta: torch.Tensor):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + delta.to(output[0].dtype), *output[1:])
        return output + delta.to(output.dtype)

    return hook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=16)
    args = parser.parse_args()

    sm = SteeredModel.shared(None)
    chat = ChatSteer(runtime=sm, max_tokens=args.tokens, batch_size=args.requests)
    knob = chat.configurable_fields(steering=ConfigurableField(id="steering"))
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
    steerings = [SETTINGS[i % len(SETTINGS)] for i in range(args.requests)]
    configs = [{"configurable": {"steering": s}} for s in steerings]
    wrapper = GlobalHookWrapper(sm, args.tokens)
    chats = [[{"role": "user", "content": q}] for q in questions]

    steps: dict[str, int] = {}

    def ceiling() -> tuple[list[str], int]:
        gens = sm.generate_batch_detailed(chats, None, max_new_tokens=args.tokens)
        steps["a_ceiling_unsteered_batch"] = max(g.completion_tokens for g in gens)
        return [g.text for g in gens], sum(g.completion_tokens for g in gens)

    def batched() -> tuple[list[str], int]:
        msgs = knob.batch(questions, configs)
        counts = [m.usage_metadata["output_tokens"] for m in msgs]
        steps["b_chatsteer_batch_mixed"] = max(counts)
        return [m.content for m in msgs], sum(counts)

    def sequential() -> tuple[list[str], int]:
        msgs = [chat.invoke(q, steering=s) for q, s in zip(questions, steerings)]
        return [m.content for m in msgs], sum(m.usage_metadata["output_tokens"] for m in msgs)

    def serialized() -> tuple[list[str], int]:
        # in a thread of its own that then exits: its torch OpenMP team goes with it and does
        # not slow the other conditions (see actsteer/worker.py)
        outs: list[tuple[str, int]] = []
        thread = threading.Thread(
            target=lambda: outs.extend(wrapper.invoke(q, s) for q, s in zip(questions, steerings))
        )
        thread.start()
        thread.join()
        return [t for t, _ in outs], sum(n for _, n in outs)

    def abatched() -> tuple[list[str], int]:
        msgs = asyncio.run(knob.abatch(questions, configs))
        return [m.content for m in msgs], sum(m.usage_metadata["output_tokens"] for m in msgs)

    def gathered() -> tuple[list[str], int]:
        async def run() -> list:
            return await asyncio.gather(
                *(chat.ainvoke(q, steering=s) for q, s in zip(questions, steerings))
            )

        msgs = asyncio.run(run())
        return [m.content for m in msgs], sum(m.usage_metadata["output_tokens"] for m in msgs)

    def pooled() -> tuple[list[str], int]:
        with ThreadPoolExecutor(len(questions)) as pool:
            msgs = list(
                pool.map(lambda a: chat.invoke(a[0], steering=a[1]), zip(questions, steerings))
            )
        return [m.content for m in msgs], sum(m.usage_metadata["output_tokens"] for m in msgs)

    conditions = {
        "a_ceiling_unsteered_batch": ceiling,
        "b_chatsteer_batch_mixed": batched,
        "c_sequential_invoke": sequential,
        "d_serialized_global_hooks": serialized,
        "e_chatsteer_abatch_mixed": abatched,
        "f_asyncio_gather_ainvoke": gathered,
        "g_thread_pool_invoke": pooled,
    }
    for s in SETTINGS:  # resolve presets (extraction, first use only), warm up the paths
        sm.resolve(s)
        chat.invoke(QUESTIONS[0], steering=s, max_tokens=2)
    wrapper.deltas(SETTINGS[1])
    texts: dict[str, list[str]] = {}
    samples: dict[str, list[float]] = {name: [] for name in conditions}
    step_rates: dict[str, list[float]] = {
        "a_ceiling_unsteered_batch": [],
        "b_chatsteer_batch_mixed": [],
    }
    for r in range(args.rounds):
        for name, fn in conditions.items():
            start = time.perf_counter()
            texts[name], tokens = fn()
            took = time.perf_counter() - start
            samples[name].append(tokens / took)
            if name in step_rates:
                step_rates[name].append(steps[name] / took)
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n}={samples[n][-1]:.1f} tok/s" for n in conditions),
            flush=True,
        )

    stats = {name: summary(s) for name, s in samples.items()}
    ceiling_tps = stats["a_ceiling_unsteered_batch"]["median"]
    seq_tps = stats["c_sequential_invoke"]["median"]
    steered = [n for n in conditions if n != "a_ceiling_unsteered_batch"]
    equal = all(texts[n] == texts["b_chatsteer_batch_mixed"] for n in steered)
    unsteered_rows = [i for i, s in enumerate(steerings) if s is None]
    result = {
        "benchmark": "batch",
        "model": sm.fingerprint.name,
        "requests": args.requests,
        "steering_settings": SETTINGS,
        "new_tokens_max": args.tokens,
        "rounds": args.rounds,
        "machine": machine(),
        "tokens_per_s": stats,
        "ratio_vs_ceiling": {n: stats[n]["median"] / ceiling_tps for n in conditions},
        "ratio_vs_sequential": {n: stats[n]["median"] / seq_tps for n in conditions},
        "outputs_equal_b_to_g": equal,
        "unsteered_rows_equal_ceiling": all(
            texts["b_chatsteer_batch_mixed"][i] == texts["a_ceiling_unsteered_batch"][i]
            for i in unsteered_rows
        ),
        "decode_steps_per_s": {n: summary(v) for n, v in step_rates.items()},
        "steps_ratio_b_vs_ceiling": summary(step_rates["b_chatsteer_batch_mixed"])["median"]
        / summary(step_rates["a_ceiling_unsteered_batch"])["median"],
        "targets": {"b_chatsteer_batch_mixed_vs_ceiling": 0.9},
    }
    path = write("batch", result)
    plot(result)
    print(
        f"\nwrote {path}; outputs equal: {equal}; decode steps/s of (b) vs (a): "
        f"{result['steps_ratio_b_vs_ceiling']:.2f}x"
    )
    for name in conditions:
        print(
            f"  {name:<28} {stats[name]['median']:8.1f} tok/s  "
            f"{result['ratio_vs_ceiling'][name]:.2f}x ceiling  "
            f"{result['ratio_vs_sequential'][name]:.2f}x sequential"
        )


def plot(result: dict) -> None:
    """Bar chart of tokens/s per condition, ceiling marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = result["tokens_per_s"]
    names = list(stats)
    medians = [stats[n]["median"] for n in names]
    errors = [
        [m - stats[n]["min"] for n, m in zip(names, medians)],
        [stats[n]["max"] - m for n, m in zip(names, medians)],
    ]
    labels = [n[2:].replace("_", " ") for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.barh(labels, medians, xerr=errors, color=["#999"] + ["#3a7"] * (len(names) - 1))
    ax.axvline(medians[0], color="#555", linestyle="--", linewidth=1)
    for y, n in enumerate(names):
        ratio = result["ratio_vs_ceiling"][n]
        ax.text(stats[n]["max"], y, f"  {ratio:.2f}x", va="center", fontsize=8)
    ax.set_xlim(0, max(stats[n]["max"] for n in names) * 1.12)
    ax.invert_yaxis()
    ax.set_xlabel("generated tokens/s (median, min-max)")
    settings, cores = len(result["steering_settings"]), result["machine"]["cpu_count"]
    ax.set_title(
        f"{result['requests']} chat requests, {settings} steering settings, "
        f"{result['new_tokens_max']} new tokens ({cores} CPU cores)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "batch.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
