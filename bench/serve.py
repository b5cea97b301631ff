"""Steering through vLLM: 64 concurrent chat requests (the held-out messages) with mixed
steering, 64 new tokens each, three ways, rounds interleaved, for an eager and then a compiled
(torch.compile) server:
  (a) vLLM with the actsteer plugin, mixed steering (None, love:2, dogs, french in turn)
  (a') the same server and requests, steered with operators other than addition (None, ablate
      love, love:2 norm-preserving, dogs:4 at ActAdd positions in turn): the plugin's Python path
  (b) the same vLLM server, the same 64 requests unsteered (the plugin's cost is (a) vs (b))
  (c) in-process ``ChatSteer.batch`` of the mixed requests, per-row steering through
      ``configurable_fields`` (this process, 2 torch threads)
Throughput counts generated tokens per second. Steered vLLM outputs are checked equal, token
for token, to the in-process ones. Needs ``make install-vllm``. Writes bench/results/serve.json
and serve.png. Run: ``.venv/bin/python bench/serve.py [--rounds N] [--requests N] [--tokens N]
[--modes eager,compiled]``.
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
from actsteer.cli import launch
from actsteer.data import neutral_inputs
from actsteer.remote import RemoteEngine
from langchain_steer import ChatSteer

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [None, "love:2", "dogs", "french"]
OPERATORS = [
    None,
    {"expression": "love", "operator": "ablate"},
    {"expression": "love:2", "operator": "add_norm_preserving"},
    {"expression": "dogs:4", "positions": "actadd"},
]


#: vLLM options of each server mode (greedy fp32 output equals in-process actsteer's).
MODES = {"eager": (*launch.EAGER_FP32, "--enforce-eager"), "compiled": launch.EAGER_FP32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--modes", default="eager,compiled", help="server modes, in turn")
    parser.add_argument("--python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    args = parser.parse_args()

    pool = neutral_inputs("heldout")
    questions = [pool[i % len(pool)] for i in range(args.requests)]
    steerings = [SETTINGS[i % len(SETTINGS)] for i in range(args.requests)]
    operated = [OPERATORS[i % len(OPERATORS)] for i in range(args.requests)]
    chats = [[{"role": "user", "content": q}] for q in questions]
    options = GenerationOptions(max_new_tokens=args.tokens)
    sm = SteeredModel.default()
    local = ChatSteer(runtime=sm, max_tokens=args.tokens, batch_size=32)
    for s in SETTINGS:  # presets ready (and extracted once) before anything is timed
        sm.resolve(s)
    knob = local.configurable_fields(steering=ConfigurableField(id="steering"))
    configs = [{"configurable": {"steering": s}} for s in steerings]

    def batched_mixed() -> int:
        msgs = knob.batch(questions, configs)
        return sum(m.usage_metadata["output_tokens"] for m in msgs)

    reference = {
        name: [
            g.token_ids
            for g in sm.engine.generate(
                [Request(c, sm.resolve(s), options) for c, s in zip(chats, mix)]
            )
        ]
        for name, mix in (("steered", steerings), ("operators", operated))
    }
    rates: dict[str, list[float]] = {}
    equal: dict[str, bool] = {}
    for mode in args.modes.split(","):
        log = Path(tempfile.mkdtemp()) / "server.log"
        server = launch.start(args.python, log, cwd=ROOT, vllm_args=MODES[mode])
        try:
            engine = RemoteEngine(server.url, sm.fingerprint.name)
            steered = [Request(c, engine.resolve(s), options) for c, s in zip(chats, steerings)]
            ops = [Request(c, engine.resolve(s), options) for c, s in zip(chats, operated)]
            plain = [Request(c, (), options) for c in chats]
            outputs: dict[str, list] = {}

            def remote(requests: list[Request], name: str, engine=engine, outputs=outputs):
                def run() -> int:
                    gens = [f.result() for f in engine.submit(requests)]
                    outputs[name] = [g.token_ids for g in gens]
                    return sum(g.completion_tokens for g in gens)

                return run

            conditions = {
                f"vllm_{mode}_steered_mixed": remote(steered, "steered"),
                f"vllm_{mode}_steered_operators": remote(ops, "operators"),
                f"vllm_{mode}_unsteered": remote(plain, "plain"),
                f"local_batch_mixed_{mode}_phase": batched_mixed,
            }
            remote(steered[:4], "warm")()  # first requests pay one-time costs
            for name in conditions:
                rates[name] = []
            for r in range(args.rounds):
                for name, fn in conditions.items():
                    start = time.perf_counter()
                    tokens = fn()
                    rates[name].append(tokens / (time.perf_counter() - start))
                print(
                    f"{mode} round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{k}={rates[k][-1]:.1f} tok/s" for k in conditions),
                    flush=True,
                )
        finally:
            server.stop()
        for name, want in reference.items():
            equal[f"{mode}_{name}"] = outputs[name] == want

    medians = {k: summary(v) for k, v in rates.items()}
    ratios, per_round = {}, {}
    for mode in args.modes.split(","):
        for kind in ("mixed", "operators"):
            a, b = rates[f"vllm_{mode}_steered_{kind}"], rates[f"vllm_{mode}_unsteered"]
            key = mode if kind == "mixed" else f"{mode}_operators"
            ratios[key] = summary(a)["median"] / summary(b)["median"]
            per_round[key] = [x / y for x, y in zip(a, b)]
    data = {
        "machine": machine(),
        "requests": args.requests,
        "tokens": args.tokens,
        "settings": SETTINGS,
        "operator_settings": OPERATORS,
        "rounds": args.rounds,
        "tok_per_s": medians,
        "samples": rates,
        "steered_vs_unsteered": ratios,
        "steered_vs_unsteered_per_round": per_round,
        "steered_outputs_equal_local": equal,
    }
    path = write("serve", data)
    plot(rates, medians, RESULTS / "serve.png")
    print(f"wrote {path}; steered/unsteered {ratios}; outputs equal to local: {equal}")
    for k, v in medians.items():
        print(f"  {k:34s} {v['median']:7.1f} tok/s")


def plot(rates: dict[str, list[float]], medians: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k.replace("_", " ") for k in rates]
    colours = [
        "C0"
        if "steered_mixed" in k
        else "C1"
        if "operators" in k
        else "C7"
        if "unsteered" in k
        else "C2"
        for k in rates
    ]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.bar(names, [medians[k]["median"] for k in rates], color=colours)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    for i, v in enumerate(rates.values()):
        ax.scatter([i] * len(v), v, color="k", s=10, zorder=3)
    ax.set_ylabel("generated tokens / s")
    ax.set_title("64 concurrent mixed-steering requests, 64 tokens (2 CPU cores)")
    ax.margins(x=0.01)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
