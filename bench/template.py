"""Every preset on the embedded model: its vector against the system prompt it stands for.

For each preset, on the 200 evaluation prompts (never used to build or choose a vector; the
first 48 are the held-out set of the training cards): behaviour success
of free-running greedy replies under no steering / the system prompt / the vector / both,
prompt tokens sent (and saved), time to first token with the system prompt vs with the vector,
quality cost (perplexity ratio, KL on neutral text) and, for the distilled presets, fidelity
(share of the prompt's teacher-forced KL the vector removes). For the distilled presets the
mean-difference vector they replace (``extract.prompt_template`` at 0.4 depth, coefficient 1,
the shipped presets until they were distilled) runs next to them. Writes
bench/results/template.json and template.png.
Run: ``.venv/bin/python bench/template.py [--prompts 200] [--max-new-tokens 48] [--presets a,b]
[--update]`` (``--update`` replaces only the named presets' rows in the results file). The
results are written after each preset, so an interrupted run keeps the presets it finished.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, save_plot, write

from actsteer import SteeredModel, Steering, presets
from actsteer.data import neutral_inputs
from actsteer.evaluate import fidelity, reply_perplexity
from actsteer.evaluate.report import evaluate_preset, run_condition
from actsteer.train import extract as ex
from actsteer.train.distill.teacher import chats

CONDITIONS = (
    "no steering",
    "system prompt",
    "mean-difference vector",
    "vector",
    "vector + system prompt",
)


def mean_difference(sm: SteeredModel, name: str, prompts: list[str], max_new_tokens: int) -> dict:
    """The pre-distillation preset: a mean difference over the user turn at 0.4 depth."""
    p = presets.get(name)
    layer = round(0.4 * (sm.num_layers - 1))
    vec = ex.prompt_template(sm, p.system_prompt or "", None, [layer], progress=False)
    cond, _ = run_condition(
        sm,
        "mean-difference vector",
        prompts,
        system_prompt=None,
        steering=Steering(vec),
        check=p.check,
        max_new_tokens=max_new_tokens,
    )
    fid = fidelity(sm, p.system_prompt or "", Steering(vec), prompts)
    return {"condition": cond, "fidelity": fid.removed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--presets", default=",".join(presets.names()))
    parser.add_argument("--update", action="store_true", help="keep the other presets' rows")
    args = parser.parse_args()
    sm = SteeredModel.default(progress=False)
    prompts = neutral_inputs("eval")[: args.prompts]
    rows: dict = {}
    old: dict = {}  # the results file's rows, kept in it until this run replaces them
    if (RESULTS / "template.json").exists():
        old = json.loads((RESULTS / "template.json").read_text())["presets"]
    if args.update:
        rows = dict(old)
    for name in args.presets.split(","):
        preset = presets.get(name)
        report = evaluate_preset(sm, name, prompts=prompts, max_new_tokens=args.max_new_tokens)
        c = {cond.name: cond for cond in report.conditions}
        base = None
        if preset.method == "distill":
            base = mean_difference(sm, name, prompts, args.max_new_tokens)
            md = base["condition"]
            c["mean-difference vector"] = md
            md_ppl = md.perplexity / c["no steering"].perplexity
        sysp, vec = c.get("system prompt"), c["vector"]
        card = sm.preset(name).meta.extra.get("training", {})
        judged = under_prompt(sm, preset.system_prompt, prompts, c) if sysp else {}
        rows[name] = {
            "method": preset.method,
            "check": report.check,
            "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens,
            "success": {k: v.success_rate for k, v in c.items()},
            "success_ci95": {k: wilson(v.success_rate, len(prompts)) for k, v in c.items()},
            "prompt_tokens_system": sysp.prompt_tokens if sysp else None,
            "prompt_tokens_vector": vec.prompt_tokens,
            "prompt_tokens_saved": (sysp.prompt_tokens - vec.prompt_tokens) if sysp else None,
            "ttft_s": {k: v.ttft_s for k, v in c.items()},
            "ttft_ratio_vector_vs_system": (vec.ttft_s / sysp.ttft_s) if sysp else None,
            "fidelity_removed": report.fidelity.removed if report.fidelity else None,
            "fidelity_mean_difference": base["fidelity"] if base else None,
            "ppl_ratio": {k: v.ppl_ratio for k, v in c.items() if k != "mean-difference vector"}
            | ({"mean-difference vector": md_ppl} if base else {}),
            "ppl_ratio_vector": vec.ppl_ratio,
            "ppl_under_prompt": judged,
            "ppl_under_prompt_ratio_vector": (
                judged["vector"] / judged["system prompt"] if judged else None
            ),
            "neutral_kl": report.neutral_kl,
            "training_card_test_fidelity": card.get("test_fidelity"),
            "training_time_s": card.get("time_s"),
            "samples": {
                k: [{"prompt": p, "reply": r, "passed": ok} for p, r, ok in v.samples[:4]]
                for k, v in c.items()
            },
        }
        print(report.table(), "\n", flush=True)
        # after each preset, over the old rows: an interrupted run keeps what it measured
        # and loses nothing that was there; a whole run without --update keeps only its own
        done = name == args.presets.split(",")[-1]
        kept = rows if args.update or done else {**old, **rows}
        write(
            "template",
            {
                "benchmark": "template",
                "model": sm.fingerprint.name,
                "machine": machine(),
                "presets": kept,
            },
        )
        plot(kept)
    print(markdown_tables(rows))


def under_prompt(sm: SteeredModel, system_prompt: str, prompts: list[str], c: dict) -> dict:
    """Perplexity of each condition's replies under the model *with* the system prompt: how
    natural a reply is for the behaviour asked for. The usual ratio (under the unsteered model)
    counts a French reply's Frenchness as a cost; this one does not."""
    prompted, _ = chats(system_prompt, prompts, template="{input}" in system_prompt)
    return {
        k: reply_perplexity(sm, prompted, [r for _, r, _ in v.samples])
        for k, v in c.items()
        if k in ("system prompt", "vector", "mean-difference vector")
    }


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson interval of a success rate ``p`` measured on ``n`` prompts."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _pct(s: dict, k: str) -> str:
    return f"{s[k]:.0%}" if k in s else "-"


def markdown_tables(rows: dict) -> str:
    """The README tables: distilled presets side by side with their prompts, then the rest."""
    out = [
        "| preset | success: none / system prompt / mean-diff vector / distilled vector / "
        "prompt + distilled | fidelity: mean-diff / distilled | ppl ratio: prompt / distilled "
        "| ppl under the prompt: distilled / prompt's replies | prompt tokens saved "
        "| TTFT vector/prompt |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if r["method"] != "distill":
            continue
        s = r["success"]
        succ = " / ".join(_pct(s, k) for k in CONDITIONS)
        out.append(
            f"| {name} | {succ} | {r['fidelity_mean_difference']:+.2f} / "
            f"{r['fidelity_removed']:+.2f} | {r['ppl_ratio']['system prompt']:.2f} / "
            f"{r['ppl_ratio_vector']:.2f} | {r['ppl_under_prompt_ratio_vector']:.2f} | "
            f"{r['prompt_tokens_saved']:.0f} | {r['ttft_ratio_vector_vs_system']:.2f} |"
        )
    out += [
        "",
        "| preset | method | success: none / prompt / vector / both | prompt tokens saved "
        "| TTFT vector/prompt | ppl ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if r["method"] == "distill":
            continue
        s = r["success"]
        succ = " / ".join(
            _pct(s, k) for k in ("no steering", "system prompt", "vector", "vector + system prompt")
        )
        saved = f"{r['prompt_tokens_saved']:.0f}" if r["prompt_tokens_saved"] is not None else "-"
        ttft = (
            f"{r['ttft_ratio_vector_vs_system']:.2f}" if r["ttft_ratio_vector_vs_system"] else "-"
        )
        out.append(
            f"| {name} | {r['method']} | {succ} | {saved} | {ttft} | {r['ppl_ratio_vector']:.2f} |"
        )
    return "\n".join(out)


def replot() -> None:
    """Redraw template.png from bench/results/template.json."""
    plot(json.loads((RESULTS / "template.json").read_text())["presets"])


def plot(rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.16
    for i, cond in enumerate(CONDITIONS):
        vals = [rows[n]["success"].get(cond, 0.0) for n in names]
        ci = [rows[n].get("success_ci95", {}).get(cond) for n in names]
        err = [
            [v - c[0] if c else 0.0 for v, c in zip(vals, ci)],
            [c[1] - v if c else 0.0 for v, c in zip(vals, ci)],
        ]
        label = "vector (distilled for the template presets)" if cond == "vector" else cond
        xs = [x + i * width for x in range(len(names))]
        ax.bar(xs, vals, width, label=label, yerr=err, capsize=2, error_kw={"lw": 0.7})
    ax.set_xticks([x + 2 * width for x in range(len(names))], names)
    ax.set_ylabel("behaviour success rate (95 % interval)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncol=3)
    ax.set_title(
        "Preset vectors vs their system prompts, SmolLM2-135M, free-running, held-out prompts"
    )
    save_plot(fig, "template.png", dpi=110)


if __name__ == "__main__":
    main()
