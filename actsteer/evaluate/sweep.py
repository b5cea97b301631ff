"""Sweeps and calibration: how behaviour and quality move with the coefficient and the layers,
and the setting that buys the most behaviour within a quality budget (the "steering card")."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.steering import Steering
from ..core.vector import SteeringVector
from ..data import neutral_inputs
from ..errors import SteeringSpecError
from ..resolve import trained_positions
from ..runtime.model import SteeredModel
from . import reply_perplexity
from .checks import get_check, judge

#: Default quality budget: steered replies may be at most this much more perplexing.
DEFAULT_MAX_PPL_RATIO = 1.25


@dataclass(frozen=True)
class SweepPoint:
    """Behaviour and quality at one (layers, coefficient) setting."""

    coeff: float
    layers: tuple[int, ...]
    success_rate: float
    mean_score: float
    perplexity: float
    ppl_ratio: float


def _vector_for(
    sm: SteeredModel, source: str | SteeringVector, layers: Sequence[int]
) -> SteeringVector:
    if isinstance(source, SteeringVector):
        return source.select(layers)
    return sm.vector(source, list(layers))


def sweep(
    sm: SteeredModel,
    source: str | SteeringVector,
    *,
    check: str,
    coeffs: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    layer_sets: Sequence[Sequence[int]] | None = None,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> list[SweepPoint]:
    """Every coefficient x layer set on held-out prompts: success rate of ``check`` and the
    perplexity of the replies under the unsteered model (ratio to unsteered replies)."""
    from tqdm.auto import tqdm

    get_check(check)  # an unknown check fails before any work
    prompts = list(prompts) if prompts is not None else neutral_inputs("heldout")[:8]
    chats = [[{"role": "user", "content": p}] for p in prompts]
    # its default layers, and the positions it will steer at when used
    if isinstance(source, SteeringVector):
        default_layers, positions = list(source.layers), trained_positions(source)
    else:
        from .. import presets

        preset = presets.get(source)
        default_layers, positions = preset.layer_indices(sm.num_layers), preset.positions
    layer_sets = layer_sets if layer_sets is not None else [default_layers]
    base = reply_perplexity(
        sm, chats, sm.generate_batch(chats, None, max_new_tokens=max_new_tokens)
    )
    grid = [(tuple(ls), float(c)) for ls in layer_sets for c in coeffs]
    points = []
    for layers, coeff in tqdm(grid, desc="actsteer: sweep", disable=not progress):
        steering = Steering(_vector_for(sm, source, layers), coeff, positions=positions)
        gens = sm.generate_batch_detailed(chats, steering, max_new_tokens=max_new_tokens)
        replies = [g.text for g in gens]
        results = [judge(check, g.text, g.finish_reason) for g in gens]
        ppl = reply_perplexity(sm, chats, replies)
        points.append(
            SweepPoint(
                coeff=coeff,
                layers=layers,
                success_rate=sum(r.passed for r in results) / len(results),
                mean_score=sum(r.score for r in results) / len(results),
                perplexity=ppl,
                ppl_ratio=ppl / base if base == base and base > 0 else float("nan"),
            )
        )
    return points


def plot_sweep(points: Sequence[SweepPoint], path: str | Path, title: str = "") -> Path:
    """Behaviour (success rate) and quality (perplexity ratio) against the coefficient, one
    line per layer set, in one PNG."""
    from .checks import needs_eval_extra

    matplotlib = needs_eval_extra("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for layers in dict.fromkeys(p.layers for p in points):
        pts = sorted((p for p in points if p.layers == layers), key=lambda p: p.coeff)
        label = f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
        ax1.plot([p.coeff for p in pts], [p.success_rate for p in pts], marker="o", label=label)
        ax2.plot([p.coeff for p in pts], [p.ppl_ratio for p in pts], marker="o", label=label)
    ax1.set(xlabel="coefficient", ylabel="behaviour success rate", ylim=(-0.05, 1.05))
    ax2.set(xlabel="coefficient", ylabel="perplexity ratio vs unsteered", yscale="log")
    ax2.axhline(DEFAULT_MAX_PPL_RATIO, color="grey", linestyle="--", label="default budget")
    ax1.legend()
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def choose(
    points: Sequence[SweepPoint], max_ppl_ratio: float = DEFAULT_MAX_PPL_RATIO
) -> SweepPoint:
    """The most successful point within the quality budget (ties: smaller coefficient)."""
    ok = [p for p in points if p.ppl_ratio == p.ppl_ratio and p.ppl_ratio <= max_ppl_ratio]
    if not ok:
        raise SteeringSpecError(
            f"no setting stays within the quality budget (perplexity ratio <= {max_ppl_ratio}); "
            "try smaller coefficients or other layers"
        )
    return max(ok, key=lambda p: (p.success_rate, p.mean_score, -abs(p.coeff)))


def calibrate(
    sm: SteeredModel,
    source: str | SteeringVector,
    *,
    check: str,
    max_ppl_ratio: float = DEFAULT_MAX_PPL_RATIO,
    **sweep_kwargs: object,
) -> tuple[SteeringVector, list[SweepPoint]]:
    """Sweep, choose the best setting under the budget, and return the vector (restricted to
    the chosen layers) with its steering card in the metadata; ``SteeredModel`` and the
    adapters then use the card's coefficient when a user gives none."""
    points = sweep(sm, source, check=check, **sweep_kwargs)  # type: ignore[arg-type]
    best = choose(points, max_ppl_ratio)
    vec = _vector_for(sm, source, best.layers)
    card = {
        **asdict(best),
        "layers": list(best.layers),
        "check": check,
        "max_ppl_ratio": max_ppl_ratio,
        "model": sm.fingerprint.to_dict(),
        "date": datetime.date.today().isoformat(),
        "points": len(points),
    }
    calibrated = vec.with_meta(
        recommended_coeff=best.coeff,
        recommended_layers=best.layers,
        extra={**vec.meta.extra, "steering_card": card},
    )
    return calibrated, points
