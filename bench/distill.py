"""Distillation speed with the prompts' shared start run once (the default: each training
step's replies packed behind it, ``teacher.packed_logprobs``; the teacher's replies generated
from its KV cache) against every row run whole (padded batches, as before), side by side in one
process on the embedded SmolLM2-135M-Instruct.

Three measures, each alternating the two forms so that neither always runs first:
  step     one training step (forward, KL, vector gradients) on the same 6 teacher replies,
           ``--reps`` interleaved repetitions over 10 different batches; tokens per step too
  teacher  the teacher's greedy replies (24 tokens) for the 248 inputs a distillation uses
  distill  the whole ``extract`` of each preset in ``--presets`` (teacher replies, training,
           dev checks, test fidelity) with its own settings, once per form; the training card's
           test fidelity shows both forms train the same vector (to float rounding)

``.venv/bin/python bench/distill.py [--presets json,friendly] [--reps 3]``
writes bench/results/distill.json and distill.png.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, save_plot, summary, write

from actsteer import SteeredModel, presets
from actsteer.data import neutral_inputs
from actsteer.train.distill import fidelity
from actsteer.train.distill import loop as D
from actsteer.train.distill import teacher as T
from actsteer.train.prepare import extract as extract_preset

FORMS = ("shared", "whole")
INPUTS = 248  # 184 training, 16 dev and 48 test inputs, as a distillation of the presets


@contextlib.contextmanager
def form(name: str) -> Iterator[None]:
    """Run everything inside with the shared prompt start run once (the default) or with every
    row run whole (this script only: packing refused, the teacher asked not to share)."""
    packed, examples = T.packed_logprobs, T.teacher_examples
    if name == "whole":
        T.packed_logprobs = lambda *a, **k: None
        T.teacher_examples = functools.partial(examples, share_prefix=False)
    try:
        yield
    finally:
        T.packed_logprobs, T.teacher_examples = packed, examples


def step_times(sm: SteeredModel, reps: int) -> dict:
    """Seconds per training step (6 json-teacher replies of up to 24 tokens, all 29 layers)."""
    prompt = presets.get("json").system_prompt
    examples = T.teacher_examples(sm, prompt, neutral_inputs("train")[:60], max_new_tokens=24)
    batches = [examples[i : i + 6] for i in range(0, 60, 6)]
    layers = range(1, sm.num_layers)
    gen = torch.Generator().manual_seed(0)
    params = {x: (torch.randn(sm.hidden_size, generator=gen) * 0.3) for x in layers}
    times: dict[str, list[float]] = {f: [] for f in FORMS}
    for rep in range(reps + 1):  # the first round warms up and is dropped
        for f in FORMS if rep % 2 == 0 else FORMS[::-1]:
            for batch in batches:
                vecs = {x: p.clone().requires_grad_(True) for x, p in params.items()}
                start = time.perf_counter()
                with form(f), torch.enable_grad():
                    kl = fidelity.mean_kl(sm, batch, D.vector_row(vecs, "all"), 4.0)
                torch.autograd.grad(kl, list(vecs.values()))
                if rep:
                    times[f].append(time.perf_counter() - start)
    rows = [(e.student, e.reply) for b in batches for e in b]
    prefix = [T.shared_prefix([e.student for e in b]) for b in batches]
    real = sum(len(p) + len(r) for p, r in rows)
    padded = sum(
        len(b) * (max(len(e.student) for e in b) + max(len(e.reply) for e in b)) for b in batches
    )
    packed = real - sum(k * (len(b) - 1) for k, b in zip(prefix, batches))
    return {
        "seconds": {f: summary(t) for f, t in times.items()},
        "tokens_per_step": {"whole": padded / len(batches), "shared": packed / len(batches)},
        "shared_prefix_tokens": sum(prefix) / len(prefix),
    }


def teacher_times(sm: SteeredModel, reps: int) -> dict:
    """Seconds for the json teacher's replies to the inputs of one distillation."""
    prompt = presets.get("json").system_prompt
    inputs = (neutral_inputs("train") + neutral_inputs("heldout"))[:INPUTS]
    times: dict[str, list[float]] = {f: [] for f in FORMS}
    for rep in range(reps):
        for f in FORMS if rep % 2 == 0 else FORMS[::-1]:
            start = time.perf_counter()
            with form(f):
                T.teacher_examples(sm, prompt, inputs, max_new_tokens=24)
            times[f].append(time.perf_counter() - start)
    return {"seconds": {f: summary(t) for f, t in times.items()}, "inputs": len(inputs)}


def whole_runs(sm: SteeredModel, names: list[str]) -> dict:
    """One full ``extract`` per preset and form, in alternating order."""
    out: dict = {}
    for i, name in enumerate(names):
        out[name] = {}
        for f in FORMS if i % 2 == 0 else FORMS[::-1]:
            with form(f):
                card = extract_preset(sm, presets.get(name), progress=False).meta.extra["training"]
            out[name][f] = {
                k: card[k] for k in ("time_s", "test_fidelity", "dev_fidelity", "steps_run")
            }
            print(f"{name} {f}: {out[name][f]}", flush=True)
    return out


def plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, t, b) = plt.subplots(1, 3, figsize=(14, 4))
    step = data["step"]["seconds"]
    a.bar(FORMS, [step[f]["median"] for f in FORMS], color=["tab:blue", "tab:orange"])
    a.set_ylabel("seconds per training step (median)")
    a.set_title(f"one step, 6 replies ({data['ratios']['step']:.2f}x)")
    teach = data["teacher"]["seconds"]
    t.bar(FORMS, [teach[f]["median"] for f in FORMS], color=["tab:blue", "tab:orange"])
    t.set_ylabel("seconds (median)")
    t.set_title(
        f"teacher replies, {data['teacher']['inputs']} inputs ({data['ratios']['teacher']:.2f}x)"
    )
    names = list(data["distill"])
    width = 0.38
    for j, f in enumerate(FORMS):
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        b.bar(xs, [data["distill"][n][f]["time_s"] for n in names], width, label=f)
    b.set_xticks(range(len(names)), names)
    b.set_ylabel("seconds for the whole distillation")
    b.set_title("extract(preset), same test fidelity")
    b.legend()
    save_plot(fig, "distill.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="json,friendly")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    sm = SteeredModel.default()
    step = step_times(sm, args.reps)
    teacher = teacher_times(sm, max(2, args.reps - 1))

    def ratio(d: dict) -> float:
        return d["seconds"]["shared"]["median"] / d["seconds"]["whole"]["median"]

    ratios = {"step": ratio(step), "teacher": ratio(teacher)}
    print(f"shared/whole: {ratios}", flush=True)
    runs = whole_runs(sm, [n for n in args.presets.split(",") if n])
    ratios |= {n: r["shared"]["time_s"] / r["whole"]["time_s"] for n, r in runs.items()}
    data = {"machine": machine(), "step": step, "teacher": teacher, "distill": runs}
    data["ratios"] = ratios
    print(f"wrote {write('distill', data)}")
    plot(data)


if __name__ == "__main__":
    main()
