"""Side-by-side evaluation of one behaviour on held-out prompts: no steering / system prompt /
vector / vector + system prompt, with success rate, prompt tokens, time to first token, tokens/s
and quality cost for each, plus the vector's fidelity to the prompt and its KL on neutral text."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.steering import SteeringLike
from ..data import neutral_inputs, neutral_texts
from ..runtime import worker
from ..runtime.model import SteeredModel
from ..train.distill.teacher import chats as teacher_chats
from . import Fidelity, fidelity, kl_divergence, reply_perplexity
from .checks import get_check, judge


@dataclass(frozen=True)
class ConditionResult:
    """One condition's numbers over all prompts."""

    name: str
    success_rate: float
    mean_score: float
    prompt_tokens: float
    ttft_s: float
    tokens_per_s: float
    perplexity: float
    ppl_ratio: float
    samples: tuple[tuple[str, str, bool], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class EvalReport:
    """Everything ``actsteer eval`` measures for one steering and one behaviour check."""

    model: str
    steering: str
    check: str
    instruction: str | None
    prompts: int
    conditions: tuple[ConditionResult, ...]
    fidelity: Fidelity | None
    neutral_kl: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.fidelity is not None:
            data["fidelity"]["removed"] = self.fidelity.removed
        return data

    def table(self) -> str:
        """A terminal table, one row per condition."""
        head = f"{'condition':<22}{'success':>8}{'score':>8}{'prompt tok':>11}{'TTFT s':>8}"
        head += f"{'tok/s':>7}{'ppl':>8}{'ppl x':>7}"
        lines = [
            f"{self.steering} on {self.model} — check {self.check!r}, {self.prompts} "
            "held-out prompts",
            head,
            "-" * len(head),
        ]
        for c in self.conditions:
            lines.append(
                f"{c.name:<22}{c.success_rate:>8.0%}{c.mean_score:>8.2f}{c.prompt_tokens:>11.1f}"
                f"{c.ttft_s:>8.3f}{c.tokens_per_s:>7.1f}{c.perplexity:>8.2f}{c.ppl_ratio:>7.2f}"
            )
        if self.fidelity is not None:
            lines.append(
                f"fidelity to the system prompt: {self.fidelity.removed:+.2f} of the "
                f"prompt's KL removed (KL none {self.fidelity.kl_none:.3f} -> vector "
                f"{self.fidelity.kl_vector:.3f})"
            )
        lines.append(f"KL(unsteered || steered) on neutral text: {self.neutral_kl:.4f} nats/token")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A Markdown report: the table, fidelity, quality cost and sample replies."""
        out = [
            f"# actsteer eval: `{self.steering}`",
            "",
            f"Model `{self.model}`, check `{self.check}`, {self.prompts} held-out prompts. "
            f"System prompt compared: {self.instruction!r}.",
            "",
            "| condition | success | score | prompt tokens | TTFT (s) | tokens/s | ppl "
            "| ppl ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in self.conditions:
            out.append(
                f"| {c.name} | {c.success_rate:.0%} | {c.mean_score:.2f} | "
                f"{c.prompt_tokens:.1f} | {c.ttft_s:.3f} | {c.tokens_per_s:.1f} | "
                f"{c.perplexity:.2f} | {c.ppl_ratio:.2f} |"
            )
        if self.fidelity is not None:
            out += [
                "",
                f"Fidelity: the vector removes {self.fidelity.removed:.0%} of the KL between "
                "the unsteered and the system-prompted model (1 = indistinguishable).",
            ]
        out += ["", f"KL on neutral text: {self.neutral_kl:.4f} nats/token.", "", "## Samples", ""]
        for c in self.conditions:
            for prompt, reply, passed in c.samples[:2]:
                mark = "pass" if passed else "fail"
                out.append(
                    f"- **{c.name}** ({mark}) — _{prompt}_ → {' '.join(reply.split())[:200]}"
                )
        return "\n".join(out) + "\n"


@worker.on_worker
def neutral_kl(sm: SteeredModel, steering: SteeringLike) -> float:
    """Mean per-token KL(P_unsteered || P_steered) over the shipped neutral passages."""
    total, n = 0.0, 0
    for text in neutral_texts():
        head, _, rest = text.partition(" ")
        base = sm.continuation_logprobs(head, " " + rest)
        steered = sm.continuation_logprobs(head, " " + rest, steering)
        total += float(kl_divergence(base, steered).sum())
        n += base.shape[0]
    return total / max(n, 1)


def run_condition(
    sm: SteeredModel,
    name: str,
    prompts: Sequence[str],
    *,
    system_prompt: str | None,
    steering: SteeringLike,
    check: str,
    max_new_tokens: int,
    timed: int = 4,
) -> tuple[ConditionResult, list[str]]:
    """Generate every prompt (one batched generate: the same replies as one by one) and score
    the replies; time the first token and tokens/s on ``timed`` prompts streamed alone."""
    get_check(check)  # an unknown check fails before any work
    with_prompt, without = teacher_chats(
        system_prompt or "", prompts, template="{input}" in (system_prompt or "")
    )
    chats = with_prompt if system_prompt else without
    gens = sm.generate_batch_detailed(chats, steering, max_new_tokens=max_new_tokens)
    results = [judge(check, g.text, g.finish_reason) for g in gens]
    ttfts, rates = [], []
    for messages in chats[: max(1, timed)]:
        start = time.perf_counter()
        first = None
        done: list = []
        for _ in sm.stream(
            messages, steering, max_new_tokens=max_new_tokens, on_finish=done.append
        ):
            first = first or time.perf_counter()
        end = time.perf_counter()
        ttfts.append((first or end) - start)
        rates.append(done[0].completion_tokens / max(end - start, 1e-9))
    replies = [g.text for g in gens]
    cond = ConditionResult(
        name=name,
        success_rate=sum(r.passed for r in results) / len(results),
        mean_score=sum(r.score for r in results) / len(results),
        prompt_tokens=sum(g.prompt_tokens for g in gens) / len(gens),
        ttft_s=sorted(ttfts)[len(ttfts) // 2],
        tokens_per_s=sum(rates) / len(rates),
        perplexity=reply_perplexity(sm, without, replies),
        ppl_ratio=float("nan"),
        samples=tuple((p, g.text, r.passed) for p, g, r in zip(prompts, gens, results)),
    )
    return cond, replies


def evaluate(
    sm: SteeredModel,
    steering: SteeringLike,
    *,
    check: str,
    instruction: str | None = None,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 40,
    with_fidelity: bool = True,
) -> EvalReport:
    """Compare no steering, the system prompt, the vector, and both, on held-out prompts."""
    prompts = list(prompts) if prompts is not None else neutral_inputs("heldout")
    label = (
        steering
        if isinstance(steering, str)
        else " + ".join(s.describe() for s in sm.resolve(steering))
    )
    plan = [("no steering", None, None), ("vector", None, steering)]
    if instruction:
        plan.insert(1, ("system prompt", instruction, None))
        plan.append(("vector + system prompt", instruction, steering))
    sm.generate("Hello", steering, max_new_tokens=2)  # warm-up: first-call costs skew timings
    results = []
    for name, system_prompt, steer in plan:
        cond, _ = run_condition(
            sm,
            name,
            prompts,
            system_prompt=system_prompt,
            steering=steer,
            check=check,
            max_new_tokens=max_new_tokens,
        )
        results.append(cond)
    base = results[0].perplexity
    results = [
        ConditionResult(**{**asdict(c), "samples": c.samples, "ppl_ratio": c.perplexity / base})
        for c in results
    ]
    fid = None
    if with_fidelity and instruction:
        fid = fidelity(sm, instruction, steering, prompts, max_new_tokens=min(24, max_new_tokens))
    return EvalReport(
        model=sm.fingerprint.name,
        steering=str(label),
        check=check,
        instruction=instruction,
        prompts=len(prompts),
        conditions=tuple(results),
        fidelity=fid,
        neutral_kl=neutral_kl(sm, steering),
    )


def evaluate_preset(sm: SteeredModel, name: str, **kwargs: Any) -> EvalReport:
    """``evaluate`` with the preset's own check and its system-prompt equivalent."""
    from .. import presets

    preset = presets.get(name)
    # fidelity is only meaningful for a vector compiled from that very prompt
    kwargs.setdefault("with_fidelity", preset.method in ("prompt_template", "distill"))
    return evaluate(sm, name, check=preset.check, instruction=preset.prompt_equivalent, **kwargs)
