"""Steering through vLLM: 64 concurrent chat requests with mixed steering, 64 new tokens each,
three ways in one run, rounds interleaved:
  (a) vLLM with the actsteer plugin, mixed steering (None, love:2, dogs, french in turn)
  (b) the same vLLM server, the same 64 requests unsteered (the plugin's cost is (a) vs (b))
  (c) in-process ``ChatSteer.batch`` of the mixed requests, per-row steering through
      ``configurable_fields`` (this process, 2 torch threads)
Throughput counts generated tokens per second. Steered vLLM outputs are checked equal, token
for token, to the in-process ones. Needs ``make install-vllm``. Writes bench/results/serve.json
and serve.png. Run: ``.venv/bin/python bench/serve.py [--rounds N] [--requests N] [--tokens N]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, summary, write
from langchain_core.runnables import ConfigurableField

from actsteer import GenerationOptions, Request, SteeredModel
from actsteer.remote import RemoteEngine
from actsteer.vllm import launch
from langchain_steer import ChatSteer

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [None, "love:2", "dogs", "french"]
QUESTIONS = [
    "Describe your weekend.",
    "What should I cook tonight?",
    "Tell me about the sea.",
    "How do I learn to draw?",
    "Why is the sky blue?",
    "Write one line about autumn.",
    "What is a good name for a cat?",
    "Give me a tip for sleeping well.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    args = parser.parse_args()

    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
    steerings = [SETTINGS[i % len(SETTINGS)] for i in range(args.requests)]
    chats = [[{"role": "user", "content": q}] for q in questions]
    options = GenerationOptions(max_new_tokens=args.tokens)
    sm = SteeredModel.default()
    local = ChatSteer(runtime=sm, max_tokens=args.tokens, batch_size=32)
    for s in SETTINGS:  # presets ready (and extracted once) before anything is timed
        sm.resolve(s)
    log = Path(tempfile.mkdtemp()) / "server.log"
    server = launch.start(args.python, log, cwd=ROOT)
    try:
        engine = RemoteEngine(server.url, sm.fingerprint.name)
        steered = [Request(c, engine.resolve(s), options) for c, s in zip(chats, steerings)]
        plain = [Request(c, (), options) for c in chats]
        outputs: dict[str, list] = {}

        def remote(requests: list[Request], name: str):
            def run() -> int:
                gens = [f.result() for f in engine.submit(requests)]
                outputs[name] = [g.token_ids for g in gens]
                return sum(g.completion_tokens for g in gens)

            return run

        knob = local.configurable_fields(steering=ConfigurableField(id="steering"))
        configs = [{"configurable": {"steering": s}} for s in steerings]

        def batched_mixed() -> int:
            msgs = knob.batch(questions, configs)
            return sum(m.usage_metadata["output_tokens"] for m in msgs)

        conditions = {
            "a_vllm_steered_mixed": remote(steered, "vllm"),
            "b_vllm_unsteered": remote(plain, "plain"),
            "c_local_batch_mixed": batched_mixed,
        }
        remote(steered[:4], "warm")()  # first requests pay one-time costs
        rates: dict[str, list[float]] = {k: [] for k in conditions}
        for r in range(args.rounds):
            for name, fn in conditions.items():
                start = time.perf_counter()
                tokens = fn()
                rates[name].append(tokens / (time.perf_counter() - start))
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{k}={v[-1]:.1f} tok/s" for k, v in rates.items()),
                flush=True,
            )
    finally:
        server.stop()

    reference = sm.engine.generate(
        [Request(c, sm.resolve(s), options) for c, s in zip(chats, steerings)]
    )
    equal = outputs["vllm"] == [g.token_ids for g in reference]
    medians = {k: summary(v) for k, v in rates.items()}
    ratio = medians["a_vllm_steered_mixed"]["median"] / medians["b_vllm_unsteered"]["median"]
    per_round = [a / b for a, b in zip(rates["a_vllm_steered_mixed"], rates["b_vllm_unsteered"])]
    data = {
        "machine": machine(),
        "requests": args.requests,
        "tokens": args.tokens,
        "settings": SETTINGS,
        "rounds": args.rounds,
        "tok_per_s": medians,
        "samples": rates,
        "steered_vs_unsteered": ratio,
        "steered_vs_unsteered_per_round": per_round,
        "steered_outputs_equal_local": equal,
    }
    path = write("serve", data)
    plot(rates, RESULTS / "serve.png")
    print(f"wrote {path}; steered/unsteered {ratio:.2f}x; outputs equal to local: {equal}")
    for k, v in medians.items():
        print(f"  {k:24s} {v['median']:7.1f} tok/s")


def plot(rates: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rates)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, [sorted(v)[len(v) // 2] for v in rates.values()], color=["C0", "C7", "C2"])
    for i, v in enumerate(rates.values()):
        ax.scatter([i] * len(v), v, color="k", s=10, zorder=3)
    ax.set_ylabel("generated tokens / s")
    ax.set_title("64 concurrent mixed-steering requests, 64 tokens (2 CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
