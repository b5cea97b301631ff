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
  (h), (i): (f) and (g) with continuous batching off (``engine.joining = False``): only calls
      that wait together with equal options merge, as before ``actsteer.schedule`` existed
With ``--arrivals``, requests also arrive as a Poisson process (``--rate`` per second for
``--duration`` seconds, mixed steering, streamed so time to first token is seen), once with
continuous batching and once without, and a ``--soak`` of short requests records the process's
resident memory every 100 requests; KV cache bytes per token of one row are reported.
Outputs of (b) to (g) are checked equal (greedy decoding). Throughput counts generated
tokens per second; conditions are interleaved round by round. Because steered rows end (EOS) at
other lengths than unsteered ones, a batch's useful tokens per decode step differ between (a) and
(b); so the batched conditions also record decode steps per second (steps = the longest row),
which compares the per-step cost of mixed steering with the unsteered ceiling directly.
Writes bench/results/batch.json and batch.png. ``--only a,b,f,g`` runs those conditions alone
(more rounds in the same time, for a steadier median; the ceiling (a) and the batch (b)
always run) and writes
bench/results/batch_only.json and batch_only.png instead.
Run: ``.venv/bin/python bench/batch.py [--rounds N] [--tokens N] [--requests N] [--only a,f,g]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, save_plot, summary, write
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
    parser.add_argument("--arrivals", action="store_true", help="Poisson arrivals and a soak")
    parser.add_argument("--rate", type=float, default=2.0, help="arrivals per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    parser.add_argument("--soak", type=int, default=1000, help="requests in the memory soak")
    parser.add_argument("--only", default="", help="condition letters to run, e.g. a,b,f,g")
    args = parser.parse_args()
    stem = "batch_only" if args.only else "batch"

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
        # not slow the other conditions (see actsteer/runtime/worker.py)
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

    def whole_batch(fn):
        def run() -> tuple[list[str], int]:
            sm.engine.joining = False
            try:
                return fn()
            finally:
                sm.engine.joining = True

        return run

    conditions = {
        "a_ceiling_unsteered_batch": ceiling,
        "b_chatsteer_batch_mixed": batched,
        "c_sequential_invoke": sequential,
        "d_serialized_global_hooks": serialized,
        "e_chatsteer_abatch_mixed": abatched,
        "f_asyncio_gather_ainvoke": gathered,
        "g_thread_pool_invoke": pooled,
        "h_asyncio_gather_whole_batch_worker": whole_batch(gathered),
        "i_thread_pool_whole_batch_worker": whole_batch(pooled),
    }
    if args.only:
        wanted = {"a", "b", *args.only.replace(" ", "").split(",")}
        conditions = {n: fn for n, fn in conditions.items() if n[0] in wanted}
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
    seq_tps = stats["c_sequential_invoke"]["median"] if "c_sequential_invoke" in stats else None
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
        # this VM only ever slows a run down (other tenants, 10-50 % for seconds at a time), so
        # each path's best round is its undisturbed speed; the ratio of bests reads the paths
        "ratio_vs_ceiling_best": {
            n: stats[n]["max"] / stats["a_ceiling_unsteered_batch"]["max"] for n in conditions
        },
        "ratio_vs_sequential": {n: stats[n]["median"] / seq_tps for n in conditions}
        if seq_tps
        else {},
        "outputs_equal_b_to_g": equal,
        "unsteered_rows_equal_ceiling": all(
            texts["b_chatsteer_batch_mixed"][i] == texts["a_ceiling_unsteered_batch"][i]
            for i in unsteered_rows
        ),
        "decode_steps_per_s": {n: summary(v) for n, v in step_rates.items()},
        "steps_ratio_b_vs_ceiling": summary(step_rates["b_chatsteer_batch_mixed"])["median"]
        / summary(step_rates["a_ceiling_unsteered_batch"])["median"],
        "targets": {
            "b_chatsteer_batch_mixed_vs_ceiling": 0.9,
            "f_asyncio_gather_ainvoke_vs_ceiling": 0.9,
            "g_thread_pool_invoke_vs_ceiling": 0.9,
        },
    }
    if args.arrivals:
        result["arrivals"] = arrivals(chat, args)
    path = write(stem, result)
    plot(result, f"{stem}.png")
    if args.arrivals:
        plot_arrivals(result["arrivals"], f"{stem}_arrivals.png")
    print(
        f"\nwrote {path}; outputs equal: {equal}; decode steps/s of (b) vs (a): "
        f"{result['steps_ratio_b_vs_ceiling']:.2f}x"
    )
    for name in conditions:
        print(
            f"  {name:<28} {stats[name]['median']:8.1f} tok/s  "
            f"{result['ratio_vs_ceiling'][name]:.2f}x ceiling "
            f"({result['ratio_vs_ceiling_best'][name]:.2f}x best of {args.rounds})  "
            + (f"{result['ratio_vs_sequential'][name]:.2f}x sequential" if seq_tps else "")
        )


def arrivals(chat: ChatSteer, args: argparse.Namespace) -> dict:
    """Poisson arrivals with and without continuous batching (same arrival times, same
    requests), then a memory soak."""
    import random

    rng = random.Random(0)
    times, t = [], 0.0
    while True:
        t += rng.expovariate(args.rate)
        if t > args.duration:
            break
        times.append(t)
    jobs = [
        (times[i], QUESTIONS[i % len(QUESTIONS)], SETTINGS[i % len(SETTINGS)])
        for i in range(len(times))
    ]
    sm = chat.runtime
    assert sm is not None
    out: dict = {"rate_per_s": args.rate, "duration_s": args.duration, "requests": len(jobs)}
    for mode in ("continuous", "whole_batch_worker"):
        sm.engine.joining = mode == "continuous"
        try:
            with ForwardTimer(sm.model) as timer:
                sent, latencies, ttfts = asyncio.run(_arrive(chat, jobs))
        finally:
            sm.engine.joining = True
        out[mode] = {
            "latency_s": _percentiles(latencies),
            "ttft_s": _percentiles(ttfts),
            **timer.under_load(sent, ttfts),
        }
        print(f"arrivals {mode}: ttft {out[mode]['ttft_s']}, latency {out[mode]['latency_s']}")
    loaded = out["continuous"]
    if "prefill_1_row_s" in loaded:  # the run had one-row prefills and decode steps to time
        out["target_p95_ttft_under_load_s"] = (
            loaded["prefill_1_row_s"] + 2 * loaded["decode_step_s"]
        )
    # one decode step and one prefill of a typical prompt, alone, for the TTFT target
    prompt = [{"role": "user", "content": QUESTIONS[0]}]
    chat.invoke(QUESTIONS[0], max_tokens=1)  # warm
    start = time.perf_counter()
    for _ in range(3):
        chat.invoke(QUESTIONS[0], max_tokens=1)
    prefill = (time.perf_counter() - start) / 3
    start = time.perf_counter()
    g = sm.generate_detailed(prompt, None, max_new_tokens=33)
    step_s = (time.perf_counter() - start - prefill) / max(g.completion_tokens - 1, 1)
    out["alone"] = {"prefill_s": prefill, "decode_step_s": step_s}
    out["target_p95_ttft_s"] = prefill + 2 * step_s
    out["kv_bytes_per_token_per_row"] = _kv_bytes_per_token(sm)
    out["soak"] = _soak(chat, args.soak)
    return out


class ForwardTimer:
    """Times every forward of ``model`` (which thread ran it, how many rows and tokens), to
    read the decode step and the prefill *under the load being measured*: the time to first
    token of a row that joins is bounded by the step in flight when it arrives and its own
    prefill, both slower with more rows decoding than alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.forwards: list[tuple[float, float, int, int]] = []
        self._open: dict[int, tuple[float, int, int]] = {}

    def __enter__(self) -> ForwardTimer:
        def before(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            rows, tokens = ids.shape if ids is not None else (0, 0)
            self._open[threading.get_ident()] = (time.perf_counter(), rows, tokens)

        def after(module, args, kwargs, output):
            began, rows, tokens = self._open.pop(threading.get_ident())
            self.forwards.append((began, time.perf_counter(), rows, tokens))

        self._hooks = [
            self.model.register_forward_pre_hook(before, with_kwargs=True),
            self.model.register_forward_hook(after, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()

    def under_load(self, sent: list[float], ttfts: list[float]) -> dict:
        """Median decode step and one-row prefill during the run, rows per step, and the share
        of requests whose TTFT is within their own bound: the run's one-row prefill plus two
        decode steps as long as the steps within a second of the request's arrival."""
        steps = [(b, e - b, r) for b, e, r, t in self.forwards if t == 1]
        prefills = [e - b for b, e, r, t in self.forwards if t > 1 and r == 1]
        if not steps or not prefills:
            return {}
        step = statistics.median(d for _, d, _ in steps)
        prefill = statistics.median(prefills)
        within = 0
        for at, ttft in zip(sent, ttfts):
            near = [d for b, d, _ in steps if abs(b - at) <= 1.0] or [step]
            within += ttft <= prefill + 2 * statistics.median(near)
        return {
            "decode_step_s": step,
            "decode_step_p95_s": _percentiles([d for _, d, _ in steps])["p95"],
            "rows_per_step_median": statistics.median(r for _, _, r in steps),
            "prefill_1_row_s": prefill,
            "prefills_by_rows": dict(Counter(r for _, _, r, t in self.forwards if t > 1)),
            "share_ttft_within_own_bound": within / len(sent),
        }


async def _arrive(chat: ChatSteer, jobs: list) -> tuple[list[float], list[float], list[float]]:
    """Each job's send time, latency and time to first token (streamed)."""
    start = time.perf_counter()

    async def one(at: float, question: str, steering: str | None) -> tuple[float, float, float]:
        await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
        sent = time.perf_counter()
        first = None
        async for _ in chat.astream(question, steering=steering):
            first = first or time.perf_counter()
        done = time.perf_counter()
        return done - sent, (first or done) - sent, sent

    results = await asyncio.gather(*(one(*job) for job in jobs))
    return [r[2] for r in results], [r[0] for r in results], [r[1] for r in results]


async def _wave(chat: ChatSteer, batch: list) -> None:
    await asyncio.gather(*(chat.ainvoke(q, steering=s, max_tokens=8) for q, s in batch))


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def _kv_bytes_per_token(sm: SteeredModel) -> int:
    config = sm.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    size = next(sm.model.parameters()).element_size()
    return 2 * sm.num_layers * heads * head_dim * size


def _soak(chat: ChatSteer, n: int) -> dict:
    """``n`` short mixed requests, 16 at a time; resident memory every 100 requests."""
    import resource

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20

    marks = [(0, rss_mb())]
    done = 0
    while done < n:
        batch = [(QUESTIONS[(done + i) % 8], SETTINGS[(done + i) % 4]) for i in range(16)]

        asyncio.run(_wave(chat, batch))
        done += len(batch)
        if done % 112 == 0 or done >= n:
            marks.append((done, rss_mb()))
    print(f"soak: rss MB {marks}")
    return {
        "requests": done,
        "rss_mb": marks,
        "growth_mb_after_first_100": marks[-1][1] - marks[1][1],
    }


def plot_arrivals(arrivals: dict, filename: str = "batch_arrivals.png") -> None:
    """Time to first token and latency (median, p95) under Poisson arrivals, per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ["continuous", "whole_batch_worker"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, metric, title in zip(axes, ["ttft_s", "latency_s"], ["time to first token", "latency"]):
        for k, stat in enumerate(["median", "p95"]):
            values = [arrivals[m][metric][stat] for m in modes]
            xs = [i + (k - 0.5) * 0.38 for i in range(len(modes))]
            ax.bar(xs, values, width=0.36, label=stat, color=["#3a7", "#7c9"][k])
            for x, v in zip(xs, values):
                ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(modes)), ["continuous batching", "whole-batch worker"])
        ax.set_ylabel("seconds")
        ax.set_title(title, fontsize=9)
    for key, style, label in (
        ("target_p95_ttft_s", ":", "prefill + 2 steps, alone"),
        ("target_p95_ttft_under_load_s", "--", "prefill + 2 steps, under this load"),
    ):
        if arrivals.get(key):
            axes[0].axhline(arrivals[key], color="#555", linestyle=style, lw=1, label=label)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Poisson arrivals, {arrivals['rate_per_s']:g}/s for {arrivals['duration_s']:g} s "
        f"({arrivals['requests']} streamed requests, mixed steering)",
        fontsize=9,
    )
    save_plot(fig, filename)


def plot(result: dict, filename: str = "batch.png") -> None:
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
        ratio, best = result["ratio_vs_ceiling"][n], result["ratio_vs_ceiling_best"][n]
        ax.text(stats[n]["max"], y, f"  {ratio:.2f}x (best {best:.2f}x)", va="center", fontsize=8)
    ax.set_xlim(0, max(stats[n]["max"] for n in names) * 1.25)
    ax.invert_yaxis()
    ax.set_xlabel("generated tokens/s (median, min-max); vs the ceiling: median (best round)")
    settings, cores = len(result["steering_settings"]), result["machine"]["cpu_count"]
    ax.set_title(
        f"{result['requests']} chat requests, {settings} steering settings, "
        f"{result['new_tokens_max']} new tokens ({cores} CPU cores)",
        fontsize=9,
    )
    save_plot(fig, filename)


if __name__ == "__main__":
    main()
