"""What distillation costs, against model size and prompt length (2 CPU cores).

For the embedded SmolLM2-135M-Instruct and a random model of about 0.5B parameters built from
its config (same tokenizer and chat template, wider and deeper), and for three system prompts
(a short preset prompt, ~100 tokens, the 323-token prompt of bench/longprompt.py), it times the
pieces of ``extract.distill`` with its default settings:

* ``teacher``: the prompted model's greedy replies (24 tokens) and top-k log-probs for the 248
  inputs a distillation uses;
* ``step``: one training step (6 replies, a quarter of them with the prompt sent too, forward,
  KL and the vectors' gradients), median of ``--steps``; next to it, interleaved, the same step
  with the rows packed behind the one start they all share (``step_one_prefix_s``: how it ran
  before ``teacher.prefix_groups`` gave the prompted rows' system turn its own shared start);
* ``dev``: one dev evaluation (16 dev replies without and with the prompt).

``estimate_s = teacher + 70 steps + 7 dev evaluations + the test fidelity (~3 dev evaluations)``
is the full distillation's cost; for the embedded model it is checked against full runs
(``--full``: ``extract.distill`` timed whole, training card's ``time_s``). Writes
bench/results/distill_cost.json and distill_cost.png.
Run: ``.venv/bin/python bench/distill_cost.py [--full] [--models 135m,0.5b]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, save_plot, write
from longprompt import SYSTEM

from actsteer import SteeredModel, presets
from actsteer.core.distill_config import DistillConfig
from actsteer.data import neutral_inputs
from actsteer.train import extract as ex
from actsteer.train.distill import loop as D
from actsteer.train.distill import teacher as T
from actsteer.train.distill.fidelity import batched_kl, mean_kl

PROMPTS = {
    "short": presets.get("json").system_prompt,
    "medium": SYSTEM[: SYSTEM.index("When a question")],
    "long": SYSTEM,
}
INPUTS = 248  # 184 training, 16 dev, 48 test: one distillation's


def bigger(sm: SteeredModel) -> SteeredModel:
    """A random ~0.5B model from the embedded model's config: 32 layers of width 1152."""
    from transformers import AutoModelForCausalLM

    config = sm.model.config.__class__.from_dict(sm.model.config.to_dict())
    config.update(
        {
            "hidden_size": 1152,
            "intermediate_size": 3072,
            "num_hidden_layers": 32,
            "num_attention_heads": 18,
            "num_key_value_heads": 6,
        }
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return SteeredModel.from_model(model, sm.tokenizer, name="random-0.5b")


def pieces(sm: SteeredModel, prompt: str, steps: int) -> dict:
    cfg = DistillConfig()
    inputs = (neutral_inputs("train") + neutral_inputs("heldout"))[:INPUTS]
    start = time.perf_counter()
    examples = T.teacher_examples(sm, prompt, inputs, max_new_tokens=cfg.max_new_tokens)
    teacher = time.perf_counter() - start
    layers = range(1, sm.num_layers)
    n_stacked = round(cfg.stack * cfg.batch_size)
    times: dict[str, list[float]] = {"grouped": [], "one_prefix": []}
    grouped = T.prefix_groups
    for i in range(steps + 1):  # the first one warms up
        batch = list(examples[i * 6 : i * 6 + cfg.batch_size])
        batch[:n_stacked] = D.stacked(batch[:n_stacked])
        for form in ("grouped", "one_prefix") if i % 2 else ("one_prefix", "grouped"):
            if form == "one_prefix":
                T.prefix_groups = lambda prompts, shared: [(shared, list(range(len(prompts))))]
            vecs = {x: torch.zeros(sm.hidden_size, requires_grad=True) for x in layers}
            start = time.perf_counter()
            try:
                with torch.enable_grad():
                    kl = mean_kl(sm, batch, D.vector_row(vecs, "all"), cfg.first_weight)
                torch.autograd.grad(kl, list(vecs.values()))
            finally:
                T.prefix_groups = grouped
            if i:
                times[form].append(time.perf_counter() - start)
    dev = examples[184:200]
    row = D.vector_row({x: torch.zeros(sm.hidden_size) for x in layers}, "all")
    start = time.perf_counter()
    with torch.inference_mode():
        batched_kl(sm, dev, row, 8, cfg.first_weight)
        batched_kl(sm, D.stacked(dev), row, 8, cfg.first_weight)
    dev_s = time.perf_counter() - start
    step = statistics.median(times["grouped"])
    prompt_tokens = len(sm.encode([{"role": "system", "content": prompt}]))
    return {
        "prompt_tokens": prompt_tokens,
        "teacher_s": teacher,
        "step_s": step,
        "step_one_prefix_s": statistics.median(times["one_prefix"]),
        "dev_eval_s": dev_s,
        "estimate_s": teacher + cfg.steps * step + (cfg.steps // cfg.eval_every + 3) * dev_s,
        "mean_reply_tokens": statistics.fmean(len(e.reply) for e in examples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="135m,0.5b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="also time whole distillations")
    args = parser.parse_args()
    base = SteeredModel.default()
    data: dict = {"machine": machine(), "prompts": {}, "models": {}}
    for name in args.models.split(","):
        sm = base if name == "135m" else bigger(base)
        params = sum(p.numel() for p in sm.model.parameters())
        data["models"][name] = {"parameters": params, "prompts": {}}
        for label, prompt in PROMPTS.items():
            out = pieces(sm, prompt, args.steps)
            if args.full and name == "135m":
                vec = ex.distill(sm, prompt, progress=False)
                out["full_s"] = vec.meta.extra["training"]["time_s"]
                out["full_steps_run"] = vec.meta.extra["training"]["steps_run"]
            data["models"][name]["prompts"][label] = out
            print(name, label, {k: round(v, 2) for k, v in out.items()}, flush=True)
            write("distill_cost", data)
        if sm is not base:
            del sm
    print("wrote", write("distill_cost", data), plot(data))


def plot(data: dict) -> Path:
    import matplotlib.pyplot as plt

    fig, (ax, steps) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, model in data["models"].items():
        rows = list(model["prompts"].values())
        xs = [r["prompt_tokens"] for r in rows]
        label = f"{name} ({model['parameters'] / 1e6:.0f}M)"
        ax.plot(xs, [r["estimate_s"] / 60 for r in rows], "o-", label=f"{label}: estimate")
        full = [(r["prompt_tokens"], r["full_s"] / 60) for r in rows if "full_s" in r]
        if full:
            ax.plot(*zip(*full), "kx", ms=9, label=f"{name}: measured whole run")
        steps.plot(xs, [r["step_s"] for r in rows], "o-", label=f"{label}: grouped starts")
        steps.plot(xs, [r["step_one_prefix_s"] for r in rows], "s--", label=f"{label}: one start")
    ax.axhline(3, color="#c44", ls="--", lw=0.8, label="3-minute target (embedded model)")
    ax.set_xlabel("system prompt tokens")
    ax.set_ylabel("minutes per distillation (2 CPU cores)")
    ax.set_title("distillation cost against prompt length and model size", fontsize=10)
    ax.legend(fontsize=7)
    steps.set_xlabel("system prompt tokens")
    steps.set_ylabel("seconds per training step (median)")
    steps.set_title("a training step: each kind of row's start once, or only the common one",
                    fontsize=9)  # fmt: skip
    steps.legend(fontsize=7)
    return save_plot(fig, "distill_cost.png")


if __name__ == "__main__":
    main()
