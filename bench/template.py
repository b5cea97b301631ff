"""Every preset on the embedded model: its vector against the system prompt it stands for.

For each preset, on held-out prompts: prompt tokens sent (and saved), time to first token with the
system prompt vs with the vector, behaviour success under no steering / system prompt / vector /
both, fidelity (prompt-template presets: share of the prompt's KL the vector removes) and quality
cost (perplexity ratio, KL on neutral text). Writes bench/results/template.json and template.png.
Run: ``.venv/bin/python bench/template.py [--prompts 8] [--max-new-tokens 32]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, write

from actsteer import SteeredModel, presets
from actsteer.data import neutral_inputs
from actsteer.evaluate.report import evaluate_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--presets", default=",".join(presets.names()))
    args = parser.parse_args()
    sm = SteeredModel.default(progress=False)
    prompts = neutral_inputs("heldout")[: args.prompts]
    rows = {}
    for name in args.presets.split(","):
        report = evaluate_preset(sm, name, prompts=prompts, max_new_tokens=args.max_new_tokens)
        c = {cond.name: cond for cond in report.conditions}
        sysp, vec = c.get("system prompt"), c["vector"]
        rows[name] = {
            "method": presets.get(name).method,
            "check": report.check,
            "success": {k: v.success_rate for k, v in c.items()},
            "prompt_tokens_system": sysp.prompt_tokens if sysp else None,
            "prompt_tokens_vector": vec.prompt_tokens,
            "prompt_tokens_saved": (sysp.prompt_tokens - vec.prompt_tokens) if sysp else None,
            "ttft_ratio_vector_vs_system": (vec.ttft_s / sysp.ttft_s) if sysp else None,
            "fidelity_removed": report.fidelity.removed if report.fidelity else None,
            "ppl_ratio_vector": vec.ppl_ratio,
            "neutral_kl": report.neutral_kl,
        }
        print(report.table(), "\n", flush=True)
    write(
        "template",
        {
            "benchmark": "template",
            "model": sm.fingerprint.name,
            "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens,
            "machine": machine(),
            "presets": rows,
        },
    )
    plot(rows)
    print(markdown_table(rows))


def markdown_table(rows: dict) -> str:
    """The README table."""
    out = [
        "| preset | method | success: none / prompt / vector / both | prompt tokens saved "
        "| TTFT vector/prompt | fidelity | ppl ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        s = r["success"]
        succ = " / ".join(
            f"{s[k]:.0%}" if k in s else "-"
            for k in ("no steering", "system prompt", "vector", "vector + system prompt")
        )
        saved = f"{r['prompt_tokens_saved']:.0f}" if r["prompt_tokens_saved"] is not None else "-"
        ttft = (
            f"{r['ttft_ratio_vector_vs_system']:.2f}" if r["ttft_ratio_vector_vs_system"] else "-"
        )
        fid = f"{r['fidelity_removed']:+.2f}" if r["fidelity_removed"] is not None else "-"
        out.append(
            f"| {name} | {r['method']} | {succ} | {saved} | {ttft} | {fid} | "
            f"{r['ppl_ratio_vector']:.2f} |"
        )
    return "\n".join(out)


def plot(rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    conds = ["no steering", "system prompt", "vector", "vector + system prompt"]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.2
    for i, cond in enumerate(conds):
        vals = [rows[n]["success"].get(cond, 0.0) for n in names]
        ax.bar([x + i * width for x in range(len(names))], vals, width, label=cond)
    ax.set_xticks([x + 1.5 * width for x in range(len(names))], names)
    ax.set_ylabel("behaviour success rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Preset vectors vs their system prompts, SmolLM2-135M (held-out prompts)")
    fig.tight_layout()
    fig.savefig(RESULTS / "template.png", dpi=110)


if __name__ == "__main__":
    main()
