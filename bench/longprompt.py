"""A long production system prompt compiled into a vector: rules kept, tokens and time saved.

``SYSTEM`` is a 300+-token support persona with five checkable rules, four in IFEval's own
wording and judged by IFEval's checkers (``actsteer.evaluate.ifeval``), the fifth (never talk
about being an AI) by actsteer's ``no-disclaimer`` check, IFEval having none. ``extract.distill``
compiles it with its default settings. Then:

* **rules:** greedy replies of ``--max-new-tokens`` to ``--requests`` held-out user messages
  (never used to build or choose anything) under no steering, the prompt, the vector and both;
  the pass rate of each rule; the training card's held-out fidelity; prompt tokens saved;
* **time:** time to first token and generated tokens/s, prompt vs vector, at batch 1 (requests
  one after another) and batch 16 (16 concurrent streams), rounds interleaved, in process and,
  with ``--vllm``, over ``actsteer serve`` (vLLM) with its prefix cache on (vLLM's default)
  and off. The same ``Engine`` interface (``astream``) times both.

Writes bench/results/longprompt.json and longprompt.png. Run:
``.venv/bin/python bench/longprompt.py [--vllm] [--requests 100] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, interval, machine, save_plot, write

from actsteer import GenerationOptions, Request, SteeredModel, Steering, SteeringVector
from actsteer.cli import launch
from actsteer.data import HELD_OUT, neutral_inputs
from actsteer.default_model import cache_root
from actsteer.evaluate import ifeval
from actsteer.evaluate.checks import judge
from actsteer.remote import RemoteEngine
from actsteer.train import extract as ex
from actsteer.train.distill.teacher import chats

ROOT = Path(__file__).resolve().parent.parent

#: Each rule: (label, IFEval instruction id or None, actsteer check id or None).
RULES = {
    "under 50 words": "length_constraints:number_words",
    "no commas": "punctuation:no_comma",
    "title in <<>>": "detectable_format:title",
    "ends with the phrase": "startend:end_checker",
    "no AI talk": None,  # IFEval has no such checker: actsteer's no-disclaimer check
}

SYSTEM = (
    "You are Juniper, the friendly front-desk assistant of the Harbor Lane Public Library, a "
    "small community library by the river. The library opens from nine in the morning to eight "
    "in the evening on weekdays and from ten to four on Saturdays; it is closed on Sundays. "
    "Members borrow up to twelve books for three weeks and renew them twice online. The "
    "library runs a homework club for children on Tuesdays, a knitting circle on Thursdays, a "
    "repair café on the first Saturday of each month, and free computer classes for older "
    "adults. Rooms can be booked for study groups. People who visit are students, parents, "
    "retirees, newcomers to the city and anyone curious, so you speak plainly and warmly, like "
    "a well-read neighbour, and you help with any question, not only questions about the "
    "library: recipes, homework, health, travel, history, science and everyday problems. When "
    "a question is about the library you use the facts above and never invent opening hours, "
    "fees or events. When you are unsure of a fact you say so briefly and suggest where to "
    "look it up, such as the reference desk. Follow these rules in every reply, without "
    "exception. "
    + ifeval.instruction("length_constraints:number_words").text
    + " "
    + ifeval.instruction("punctuation:no_comma").text
    + " "
    + ifeval.instruction("detectable_format:title").text
    + " Never talk about what you are or what you cannot do. "
    + ifeval.instruction("startend:end_checker").text
)


def rule_passes(reply: str) -> dict[str, bool]:
    """Each rule's verdict on ``reply`` (IFEval strict, or actsteer's no-disclaimer check)."""
    return {
        label: judge(f"ifeval:{rid}" if rid else "no-disclaimer", reply).passed
        for label, rid in RULES.items()
    }


def quality(sm: SteeredModel, vec: SteeringVector, requests: list[str], max_new: int) -> dict:
    with_prompt, without = chats(SYSTEM, requests, template=False)
    conditions = {
        "none": (without, None),
        "prompt": (with_prompt, None),
        "vector": (without, Steering(vec)),
        "prompt + vector": (with_prompt, Steering(vec)),
    }
    out = {}
    for cond, (prompts, steering) in conditions.items():
        gens = sm.generate_batch_detailed(
            prompts, [steering] * len(prompts), max_new_tokens=max_new
        )
        verdicts = [rule_passes(g.text) for g in gens]
        n = len(gens)
        out[cond] = {
            "rules": {
                label: {
                    "passed": sum(v[label] for v in verdicts),
                    "interval95": interval(sum(v[label] for v in verdicts), n),
                }
                for label in RULES
            },
            "all_rules": sum(all(v.values()) for v in verdicts),
            "n": n,
            "cut_by_cap": sum(g.finish_reason == "length" for g in gens),
            "example": gens[0].text[:300],
        }
        print(cond, {k: v["passed"] for k, v in out[cond]["rules"].items()}, flush=True)
    return out


async def _timed(engine, requests: list[Request]) -> tuple[list[float], float, int]:
    """Stream ``requests`` concurrently: each one's time to first token, the wall time, and the
    tokens generated."""
    start = time.perf_counter()

    async def one(request: Request) -> tuple[float, int]:
        sent, first, tokens = time.perf_counter(), None, 0
        async for item in engine.astream(request):
            if isinstance(item, str):
                first = first or time.perf_counter()
            else:
                tokens = item.completion_tokens
        return (first or time.perf_counter()) - sent, tokens

    results = await asyncio.gather(*(one(r) for r in requests))
    return [r[0] for r in results], time.perf_counter() - start, sum(r[1] for r in results)


def timing(engine, steering_of, requests: list[str], rounds: int, tokens: int) -> dict:
    """TTFT and tok/s for the prompt and for the vector, at batch 1 and batch 16 (all in one
    event loop: a remote engine's async client belongs to the loop that made it)."""
    return asyncio.run(_timing(engine, steering_of, requests, rounds, tokens))


async def _timing(engine, steering_of, requests: list[str], rounds: int, tokens: int) -> dict:
    options = GenerationOptions(max_new_tokens=tokens)
    with_prompt, without = chats(SYSTEM, requests, template=False)
    vector = engine.resolve(steering_of)
    made = {
        "prompt": [Request(c, (), options) for c in with_prompt],
        "vector": [Request(c, vector, options) for c in without],
    }
    samples: dict = {f"{c} batch {b}": {"ttft": [], "tok_s": []} for c in made for b in (1, 16)}
    await _timed(engine, made["prompt"][:2] + made["vector"][:2])  # warm
    for r in range(rounds):
        for cond, reqs in made.items():
            chunk = reqs[16 * r : 16 * r + 16]
            # batch 1: one request after another
            for req in chunk[:4]:
                ttft, wall, n = await _timed(engine, [req])
                samples[f"{cond} batch 1"]["ttft"] += ttft
                samples[f"{cond} batch 1"]["tok_s"].append(n / wall)
            ttft, wall, n = await _timed(engine, chunk)
            samples[f"{cond} batch 16"]["ttft"] += ttft
            samples[f"{cond} batch 16"]["tok_s"].append(n / wall)
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{k} ttft {statistics.median(v['ttft']):.3f}s" for k, v in samples.items()
        ), flush=True)  # fmt: skip
    out = {}
    for key, v in samples.items():
        out[key] = {
            "ttft_median_s": statistics.median(v["ttft"]),
            "ttft_p95_s": sorted(v["ttft"])[int(0.95 * (len(v["ttft"]) - 1))],
            "tok_per_s_median": statistics.median(v["tok_s"]),
            "samples": v,
        }
    for b in (1, 16):
        p, q = out[f"prompt batch {b}"], out[f"vector batch {b}"]
        out[f"ttft_saving_batch_{b}"] = 1.0 - q["ttft_median_s"] / p["ttft_median_s"]
        out[f"tok_s_ratio_batch_{b}"] = q["tok_per_s_median"] / p["tok_per_s_median"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per timed request")
    parser.add_argument("--vllm", action="store_true", help="also time over actsteer serve")
    parser.add_argument("--python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--replot", action="store_true", help="only redraw the saved results")
    args = parser.parse_args()
    if args.replot:
        print("wrote", plot(json.loads((RESULTS / "longprompt.json").read_text())))
        return
    requests = neutral_inputs("eval")[HELD_OUT:][: args.requests]
    sm = SteeredModel.default()
    prompt_tokens = len(sm.encode([{"role": "system", "content": SYSTEM}]))
    folder = cache_root() / "longprompt"
    path = folder / "juniper.safetensors"
    vec = SteeringVector.load(path, model=sm.fingerprint) if path.is_file() else None
    if vec is None or vec.meta.source.get("system_prompt") != SYSTEM:
        vec = ex.distill(sm, SYSTEM, progress=True)
        folder.mkdir(parents=True, exist_ok=True)
        vec.save(path)
    card = vec.meta.extra["training"]
    results: dict = {
        "machine": machine(),
        "system_prompt": SYSTEM,
        "system_prompt_tokens": prompt_tokens,
        "prompt_tokens_saved": vec.meta.source["prompt_tokens_saved"],
        "rules": {k: v or "actsteer no-disclaimer" for k, v in RULES.items()},
        "fidelity": card["test_fidelity"],
        "stack_kl": card["test_stack_kl"],
        "distill_s": card["time_s"],
        "requests": len(requests),
        "max_new_tokens": args.max_new_tokens,
    }
    results["quality"] = quality(sm, vec, requests, args.max_new_tokens)
    write("longprompt", results)
    timed_requests = neutral_inputs("eval")[HELD_OUT:][: 16 * args.rounds]
    results["timing"] = {
        "in_process": timing(sm.engine, Steering(vec), timed_requests, args.rounds, args.tokens)
    }
    write("longprompt", results)
    if args.vllm:
        with tempfile.TemporaryDirectory() as vectors:
            vec.save(Path(vectors) / "juniper.safetensors")
            for label, extra in (("vllm_prefix_cache", ()), ("vllm_no_prefix_cache",
                                 ("--no-enable-prefix-caching",))):  # fmt: skip
                log = Path(tempfile.mkdtemp()) / "server.log"
                server = launch.start(
                    args.python,
                    log,
                    cwd=ROOT,
                    vectors=vectors,
                    vllm_args=(*launch.EAGER_FP32, "--enforce-eager", *extra),
                )
                try:
                    engine = RemoteEngine(server.url, sm.fingerprint.name)
                    results["timing"][label] = timing(
                        engine, "file:juniper", timed_requests, args.rounds, args.tokens
                    )
                finally:
                    server.stop()
                write("longprompt", results)
    print("wrote", write("longprompt", results), plot(results))


WHERE = {
    "in_process": "in process",
    "vllm_prefix_cache": "vLLM, prefix\ncache on",
    "vllm_no_prefix_cache": "vLLM, prefix\ncache off",
}


def plot(results: dict) -> Path:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    q = results["quality"]
    labels = list(results["rules"])
    conds = list(q)
    width = 0.8 / len(conds)
    colours = {"none": "#999", "prompt": "#48a", "vector": "#6a6", "prompt + vector": "#d84"}
    for k, cond in enumerate(conds):
        n = q[cond]["n"]
        rates = [q[cond]["rules"][lab]["passed"] / n for lab in labels]
        left.bar([i + k * width for i in range(len(labels))], rates, width, label=cond,
                 color=colours[cond])  # fmt: skip
    left.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, fontsize=8)
    left.set_ylim(0, 1)
    left.set_ylabel("pass rate")
    left.set_title(f"rules of a {results['system_prompt_tokens']}-token system prompt", fontsize=9)
    left.legend(fontsize=7)
    timing = results.get("timing", {})
    groups = [(where, b) for where in timing for b in (1, 16)]
    for k, cond in enumerate(("prompt", "vector")):
        values = [timing[w][f"{cond} batch {b}"]["ttft_median_s"] for w, b in groups]
        right.bar([i + k * 0.4 for i in range(len(groups))], values, 0.4, label=cond,
                  color=colours[cond])  # fmt: skip
    right.set_xticks(
        [i + 0.2 for i in range(len(groups))],
        [f"{WHERE.get(w, w)}\nbatch {b}" for w, b in groups],
        fontsize=7,
    )
    right.set_ylabel("median time to first token (s)")
    right.set_title("prompt vs vector: time to first token (2 CPU cores)", fontsize=9)
    right.legend(fontsize=7)
    return save_plot(fig, "longprompt.png")


if __name__ == "__main__":
    main()
