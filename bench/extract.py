"""Time to extract a steering vector: actsteer vs repeng 0.4 vs steering-vectors 0.12.

One process, one loaded model (the embedded SmolLM2-135M-Instruct), the same 64 contrastive
sentiment pairs (raw strings, no chat template) and the same 5 layers for every condition:
  actsteer ``mean_diff`` and ``pca``, each with ``read="last"`` and ``read="mean"``, plus
      ``pca(read="last", center=True)``, repeng's exact estimator (the headline ratio); all
      batch 32, the library default; reads stop after the deepest requested layer
  repeng ``ControlVector.train`` (``batch_size=32``, its default method ``pca_diff``)
  steering-vectors ``train_steering_vector`` (its defaults: batch 1, mean of differences)
Each condition runs once as a warm-up (recorded as ``first_call_s``), then ``--reps`` rounds,
each round running every condition once in a shuffled order. actsteer's idle hooks are removed
while the competitors run, so they see a plain Hugging Face model (as in overhead.py).
actsteer computes each layer's typical activation norm on its first extraction for a model
(cached for the life of the ``SteeredModel``); it is timed separately as a one-time cost.

Layer alignment. actsteer's layer ``N`` is the output of decoder block ``N`` (0-based,
``model.model.layers[N]``). steering-vectors hooks the same modules (``model.layers.{num}``,
``layer_type="decoder_block"``), so its ``N`` is the same. repeng reads
``out.hidden_states[...]`` from ``output_hidden_states=True``, where index 0 is the embeddings;
its ``batched_get_hiddens`` (vgel/repeng ``repeng/extract.py``, identical in the 0.4.0 wheel)
already shifts by one: ``hidden_idx = layer + 1 if layer >= 0 else layer``. So repeng's layer
``N`` is also decoder block ``N`` and all three libraries get the same indices, no offset.
(Caveat: ``hidden_states[-1]`` is after the final norm in transformers, so this holds for every
layer but the last; the layers benchmarked are well inside.) The script checks this on the model
(``sanity.layer_alignment``: max |hidden_states[N+1] - actsteer layer N| at the last token).

Sanity (apples to apples), per layer, from the vectors of the last round: cosine of actsteer
``mean_diff(read="last")`` vs steering-vectors (same estimator: ~1), and the signed cosine of
actsteer ``pca(read="last", center=True)`` vs repeng (same estimator as repeng's sklearn PCA,
same sign rule: ~1). |cosine| of actsteer ``mean_diff`` (and uncentred ``pca``) vs repeng is
recorded too, for information only: sklearn's PCA centres the pair differences, so repeng's
direction is the main axis of variation among the differences, not the mean difference, and on
these pairs it is far from it (|cos| ~0.05-0.3 in the smoke run) although layers align exactly.

Compatibility shims (in this script only, never in actsteer): repeng 0.4 uses ``np.float_`` in
annotations evaluated at import, removed in numpy 2, so it is restored as ``np.float64`` before
importing repeng. repeng's unconditional tqdm bars are silenced. Nothing else is needed for
training under transformers 5: the model is loaded by actsteer (no ``torch_dtype``), and the
tuple-vs-tensor decoder output only matters to repeng's ``ControlModule`` (steering, unused
here); steering-vectors' read hook already accepts both.

Install the competitors (see bench/requirements.txt; ``--no-deps`` because both pin
numpy<2 / transformers<5), then run:
``ACTSTEER_CACHE=... HF_HUB_OFFLINE=1 .venv/bin/python bench/extract.py [--reps N]``.
Writes bench/results/extract.json and extract.png.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.metadata
import itertools
import random
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, save_plot, summary, write

from actsteer import SteeredModel
from actsteer.runtime import worker
from actsteer.train.extract import mean_diff, pca

LAYERS = [6, 7, 8, 9, 10]
BATCH = 32
TARGET = 0.5  # issue 3: actsteer at most half of repeng's time
# like for like with repeng's pca_diff: centred PCA of last-token differences (checked: cos ~1)
HEADLINE = "actsteer_pca_last_centred"

TEMPLATES = [
    "I think this movie is {}.",
    "The food at that restaurant was {}.",
    "My first day at the new job was {}.",
    "Honestly, the weather this weekend has been {}.",
    "Our trip to the coast last summer was {}.",
    "The people who moved in next door seem {}.",
    "That book my sister lent me was {}.",
    "The service at the hotel was {}.",
]
ADJECTIVES = [
    ("wonderful", "terrible"),
    ("delightful", "awful"),
    ("fantastic", "horrible"),
    ("lovely", "dreadful"),
    ("excellent", "miserable"),
    ("amazing", "disgusting"),
    ("brilliant", "appalling"),
    ("great", "bad"),
]


def contrastive_pairs(n: int = 64) -> list[tuple[str, str]]:
    """``n`` (positive, negative) sentiment pairs differing in one adjective (at most 64)."""
    combos = list(itertools.product(TEMPLATES, ADJECTIVES))
    if not 1 <= n <= len(combos):
        raise SystemExit(f"--pairs must be between 1 and {len(combos)}")
    random.Random(0).shuffle(combos)
    return [(t.format(good), t.format(bad)) for t, (good, bad) in combos[:n]]


def competitors() -> tuple[types.ModuleType, types.ModuleType]:
    """Import repeng and steering-vectors with the shims they need here."""
    import numpy as np

    if not hasattr(np, "float_"):  # removed in numpy 2; repeng 0.4 uses it at import time
        np.float_ = np.float64
    import repeng.extract
    import steering_vectors
    import tqdm

    # repeng shows progress bars unconditionally; silence them (as actsteer's progress=False)
    repeng.extract.tqdm = types.SimpleNamespace(tqdm=functools.partial(tqdm.tqdm, disable=True))
    return repeng, steering_vectors


@contextlib.contextmanager
def plain_model(sm: SteeredModel) -> Iterator[None]:
    """Remove actsteer's (idle) hooks for the duration, so competitors see a plain HF model."""
    sm.close()
    try:
        yield
    finally:
        sm.handle.reinstall()


def as_directions(name: str, out: Any) -> dict[int, torch.Tensor]:
    """``{layer: float64 tensor}`` from each library's result type."""
    if name.startswith("actsteer"):
        d = out.directions
    elif name.startswith("repeng"):
        d = {k: torch.from_numpy(v) for k, v in out.directions.items()}
    else:
        d = out.layer_activations
    return {int(k): v.detach().double().flatten().cpu() for k, v in d.items()}


def cosines(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> dict[int, float]:
    return {k: float(torch.nn.functional.cosine_similarity(a[k], b[k], dim=0)) for k in a}


def layer_alignment(sm: SteeredModel, prompt: str) -> dict[str, Any]:
    """repeng's ``hidden_states[N + 1]`` (and, for contrast, ``[N]``) vs actsteer's layer N."""
    ids = torch.tensor([sm.encode(prompt)])
    with plain_model(sm), torch.inference_mode():
        out = sm.model(input_ids=ids, output_hidden_states=True)
    ours = sm.hidden_states([prompt], LAYERS)
    plus_one, same = {}, {}
    for n in LAYERS:
        mine = ours[n][0][-1]
        plus_one[n] = float((out.hidden_states[n + 1][0, -1] - mine).abs().max())
        same[n] = float((out.hidden_states[n][0, -1] - mine).abs().max())
    return {
        "rule": "repeng layer N reads hidden_states[N + 1] = output of decoder block N",
        "source": "vgel/repeng repeng/extract.py batched_get_hiddens: "
        "hidden_idx = layer + 1 if layer >= 0 else layer (same in the 0.4.0 wheel)",
        "max_abs_diff_hidden_states_N_plus_1": plus_one,
        "max_abs_diff_hidden_states_N": same,
        "ok": max(plus_one.values()) < 1e-4 < min(same.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="interleaved rounds after warm-up")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--sv-batch-size", type=int, default=1, help="steering-vectors batch (its default: 1)"
    )
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    repeng, steering_vectors = competitors()
    sm = SteeredModel.default(progress=False)
    tokenizer = copy.deepcopy(sm.tokenizer)  # competitors may set a pad token; keep ours intact
    pairs = contrastive_pairs(args.pairs)
    dataset = [repeng.DatasetEntry(positive=p, negative=n) for p, n in pairs]

    def ours(fn: Callable, read: str, **kw: Any) -> Callable[[], Any]:
        return lambda: fn(sm, pairs, LAYERS, read=read, batch_size=BATCH, progress=False, **kw)

    def run_repeng() -> Any:
        with plain_model(sm):
            return repeng.ControlVector.train(
                sm.model, tokenizer, dataset, hidden_layers=LAYERS, batch_size=BATCH
            )

    def run_sv() -> Any:
        with plain_model(sm):
            return steering_vectors.train_steering_vector(
                sm.model, tokenizer, pairs, layers=LAYERS, batch_size=args.sv_batch_size
            )

    conditions: dict[str, Callable[[], Any]] = {
        "actsteer_mean_diff_last": ours(mean_diff, "last"),
        "actsteer_mean_diff_mean": ours(mean_diff, "mean"),
        "actsteer_pca_last": ours(pca, "last"),
        "actsteer_pca_mean": ours(pca, "mean"),
        "actsteer_pca_last_centred": ours(pca, "last", center=True),
        "repeng_pca_diff": run_repeng,
        "steering_vectors_mean": run_sv,
    }

    start = time.perf_counter()
    sm.activation_norms()
    norms_s = time.perf_counter() - start
    print(f"actsteer one-time activation norms: {norms_s:.2f} s", flush=True)

    last: dict[str, Any] = {}

    def timed(name: str) -> float:
        # every condition runs on actsteer's generation thread, where actsteer's own forward
        # passes run: one torch OpenMP team for all, so no condition is slowed by another's
        start = time.perf_counter()
        last[name] = worker.call(conditions[name])
        return time.perf_counter() - start

    first_call = {name: timed(name) for name in conditions}  # warm-up
    print("warm-up: " + ", ".join(f"{n}={s:.2f}s" for n, s in first_call.items()), flush=True)
    samples: dict[str, list[float]] = {name: [] for name in conditions}
    for r in range(args.reps):
        order = list(conditions)
        random.Random(r).shuffle(order)
        for name in order:
            samples[name].append(timed(name))
        print(
            f"round {r + 1}/{args.reps}: "
            + ", ".join(f"{n}={samples[n][-1]:.2f}s" for n in conditions),
            flush=True,
        )

    stats = {name: summary(s) for name, s in samples.items()}
    ref = stats["repeng_pca_diff"]["median"]
    ratios = {name: stats[name]["median"] / ref for name in conditions}
    paired = {
        name: summary([x / y for x, y in zip(samples[name], samples["repeng_pca_diff"])])["median"]
        for name in conditions
    }
    sanity = sanity_checks(sm, pairs[0][0], {n: as_directions(n, v) for n, v in last.items()})
    result = {
        "benchmark": "extract",
        "model": sm.fingerprint.name,
        "pairs": len(pairs),
        "pair_example": list(pairs[0]),
        "layers": LAYERS,
        "layer_convention": "layer N = output of decoder block N (0-based) for all three "
        "libraries; see sanity.layer_alignment",
        "settings": {
            "actsteer": {
                "batch_size": BATCH,
                "reads": ["last", "mean"],
                "pca_center": "False (library default) and True (repeng's estimator)",
            },
            "repeng": {"batch_size": BATCH, "method": "pca_diff", "read": "last token"},
            "steering_vectors": {
                "batch_size": args.sv_batch_size,
                "aggregator": "mean",
                "read": "last token",
            },
        },
        "versions": {
            pkg: importlib.metadata.version(pkg)
            for pkg in ("repeng", "steering-vectors", "transformers", "numpy", "scikit-learn")
        },
        "reps": args.reps,
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "seconds": stats,
        "first_call_s": first_call,
        "actsteer_one_time_activation_norms_s": norms_s,
        "ratio_vs_repeng_of_medians": ratios,
        "ratio_vs_repeng_paired_median": paired,
        "target": {
            "rule": "actsteer <= 0.5x repeng (issue 3)",
            "max_ratio": TARGET,
            "headline": HEADLINE,
            "met": {n: ratios[n] <= TARGET for n in conditions if n.startswith("actsteer")},
        },
        "sanity": sanity,
    }
    path = write("extract", result)
    if not args.no_plot:
        plot(stats, ratios, ref, len(pairs))
    print(f"\nwrote {path}")
    for name in conditions:
        s = stats[name]
        print(
            f"  {name:<24} median {s['median']:6.2f} s (min {s['min']:.2f}, max {s['max']:.2f})"
            f"  {ratios[name]:.2f}x repeng (paired {paired[name]:.2f}x)"
        )
    print(f"  target {HEADLINE} <= {TARGET}x repeng: {ratios[HEADLINE] <= TARGET}")
    print("  sanity ok:", {k: v["ok"] for k, v in sanity.items()})


def sanity_checks(
    sm: SteeredModel, prompt: str, vecs: dict[str, dict[int, torch.Tensor]]
) -> dict[str, Any]:
    """Do the libraries find the same direction on the same layers?"""
    md = vecs["actsteer_mean_diff_last"]
    md_sv = cosines(md, vecs["steering_vectors_mean"])
    md_rp = cosines(md, vecs["repeng_pca_diff"])
    pca_rp = cosines(vecs["actsteer_pca_last"], vecs["repeng_pca_diff"])
    centred_rp = cosines(vecs["actsteer_pca_last_centred"], vecs["repeng_pca_diff"])
    why = (
        "informational: repeng's pca_diff is sklearn PCA, which centres the pair differences, "
        "so its first component is the main axis of variation among the differences, not the "
        "mean difference; the same estimator in actsteer (pca center=True) is checked below"
    )
    return {
        "layer_alignment": layer_alignment(sm, prompt),
        "cos_actsteer_mean_diff_last_vs_steering_vectors": {
            "per_layer": md_sv,
            "ok": min(md_sv.values()) > 0.99,
        },
        "abs_cos_actsteer_mean_diff_last_vs_repeng": {
            "per_layer": {k: abs(v) for k, v in md_rp.items()},
            "signed": md_rp,
            "note": why,
            "ok": None,
        },
        "cos_actsteer_pca_last_uncentred_vs_repeng": {
            "per_layer": pca_rp,
            "note": why,
            "ok": None,
        },
        "cos_actsteer_pca_last_centred_vs_repeng": {
            "per_layer": centred_rp,
            "note": "same estimator and sign rule as repeng: should be ~1 (signed)",
            "ok": min(centred_rp.values()) > 0.99,
        },
    }


def plot(stats: dict, ratios: dict, ref: float, n_pairs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats)
    colors = ["#47a" if n.startswith("actsteer") else "#888" for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    med = [stats[n]["median"] for n in names]
    err = [
        [stats[n]["median"] - stats[n]["min"] for n in names],
        [stats[n]["max"] - stats[n]["median"] for n in names],
    ]
    bars = ax.bar(range(len(names)), med, yerr=err, capsize=4, color=colors)
    for bar, n in zip(bars, names):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"{bar.get_height():.2f} s\n{ratios[n]:.2f}x",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(TARGET * ref, color="#a74", linestyle="--", linewidth=1, label="target: 0.5x repeng")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xticks(range(len(names)), [n.replace("_", "\n", 1) for n in names], fontsize=8)
    ax.set_yscale("log")  # steering-vectors (batch 1) is an order of magnitude slower
    ax.set_ylabel("seconds per vector (median, min-max; log)")
    ax.set_title(
        f"Extracting a vector: {n_pairs} pairs, layers {LAYERS[0]}-{LAYERS[-1]}, SmolLM2-135M"
    )
    low = min(min(stats[n]["min"] for n in names), TARGET * ref)
    ax.set_ylim(low / 2, max(stats[n]["max"] for n in names) * 3)
    save_plot(fig, "extract.png")


if __name__ == "__main__":
    main()
