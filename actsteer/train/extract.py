"""Where vectors come from: contrastive reads of a model's own activations (``mean_diff``,
``pca``, ``actadd``), and the two ways of compiling a system prompt, ``prompt_template`` (a mean
difference, ``actsteer.train.template``) and ``distill`` (``actsteer.train.distill``), which
this module also offers so that ``from actsteer import extract`` reaches every method.

Every contrastive method reads unsteered hidden states through ``SteeredModel.hidden_states``
(batched, left-padded, padding-aware, stopping after the deepest layer read, so a batch gives
the same vector as one-by-one reads) and returns a ``SteeringVector`` whose metadata records
the method, its inputs (and their hash), the model fingerprint and each layer's typical norm.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch

from ..core.vector import SteeringVector
from ..errors import SteeringSpecError
from ..prompts import Prompt
from ..runtime import worker
from .common import chosen_layers, vector_meta
from .distill.run import distill
from .template import prompt_template

if TYPE_CHECKING:
    from ..runtime.surface import Steerable

__all__ = ["actadd", "distill", "mean_diff", "pair_differences", "pca", "prompt_template"]

Read = Literal["last", "mean"]


def _pooled(states: list[torch.Tensor], read: Read) -> torch.Tensor:
    """One vector per prompt: its last token, or the mean over its tokens after the first (the
    first token of a sequence is an attention sink with outsized activations)."""
    if read == "last":
        return torch.stack([h[-1] for h in states])
    if read == "mean":
        return torch.stack([(h[1:] if h.shape[0] > 1 else h).mean(0) for h in states])
    raise SteeringSpecError(f"read must be 'last' or 'mean', got {read!r}")


def _check_pairs(pairs: Sequence[tuple[Prompt, Prompt]], method: str) -> None:
    if not pairs:
        raise SteeringSpecError(f"{method} needs at least one (positive, negative) pair")
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise SteeringSpecError(
                f"{method}: each pair must be (positive, negative), got {pair!r}"
            )


@worker.on_worker
def pair_differences(
    sm: Steerable,
    pairs: Sequence[tuple[Prompt, Prompt]],
    layers: Iterable[int] | None = None,
    *,
    read: Read = "mean",
    batch_size: int = 32,
    progress: bool | None = None,
) -> dict[int, torch.Tensor]:
    """``{layer: (pairs, hidden)}`` of pooled ``act(positive) - act(negative)``."""
    chosen = chosen_layers(sm, layers)
    prompts = [p for p, _ in pairs] + [n for _, n in pairs]
    states = sm.hidden_states(prompts, chosen, batch_size=batch_size, progress=progress)
    n = len(pairs)
    return {
        layer: _pooled(states[layer][:n], read) - _pooled(states[layer][n:], read)
        for layer in chosen
    }


@worker.on_worker
def mean_diff(
    sm: Steerable,
    pairs: Sequence[tuple[Prompt, Prompt]],
    layers: Iterable[int] | None = None,
    *,
    read: Read = "mean",
    batch_size: int = 32,
    progress: bool | None = None,
) -> SteeringVector:
    """Contrastive mean difference (CAA, Rimsky et al. 2023): the mean over pairs of
    ``act(positive) - act(negative)``, read at the last token or averaged over tokens."""
    _check_pairs(pairs, "mean_diff")
    diffs = pair_differences(sm, pairs, layers, read=read, batch_size=batch_size, progress=progress)
    directions = {layer: d.mean(0) for layer, d in diffs.items()}
    source = {"pairs": [[str(p), str(n)] for p, n in pairs], "read": read}
    return SteeringVector(directions, vector_meta(sm, "mean_diff", source, sorted(diffs)))


@worker.on_worker
def pca(
    sm: Steerable,
    pairs: Sequence[tuple[Prompt, Prompt]],
    layers: Iterable[int] | None = None,
    *,
    read: Read = "last",
    center: bool = False,
    batch_size: int = 32,
    progress: bool | None = None,
) -> SteeringVector:
    """First principal component of the pair differences (RepE / repeng ``pca_diff``).

    The sign is fixed so that positives project higher than their negatives for most pairs; the
    direction is scaled to the mean projection of the differences, so its magnitude matches a
    mean-difference vector's. ``center=True`` subtracts the mean difference first, as repeng's
    sklearn PCA does; the default (uncentered) also works for a single pair.
    """
    _check_pairs(pairs, "pca")
    diffs = pair_differences(sm, pairs, layers, read=read, batch_size=batch_size, progress=progress)
    directions = {}
    for layer, d in diffs.items():
        x = d.double()
        if center:
            x = x - x.mean(0, keepdim=True)
        if not bool(x.abs().sum() > 0):
            raise SteeringSpecError(f"layer {layer}: all pair differences are zero")
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        direction = vh[0]
        proj = d.double() @ direction
        if (proj > 0).double().mean() < 0.5 or (
            (proj > 0).double().mean() == 0.5 and proj.sum() < 0
        ):
            direction, proj = -direction, -proj
        directions[layer] = (direction * proj.abs().mean()).float()
    source = {"pairs": [[str(p), str(n)] for p, n in pairs], "read": read, "center": center}
    return SteeringVector(directions, vector_meta(sm, "pca", source, sorted(diffs)))


@worker.on_worker
def actadd(
    sm: Steerable,
    positive: Prompt,
    negative: Prompt,
    layers: Iterable[int] | None = None,
    *,
    form: Literal["mean", "positional"] = "mean",
    read: Read = "mean",
) -> SteeringVector:
    """ActAdd (Turner et al. 2023) from one prompt pair, e.g. ``actadd(sm, "Love", "Hate")``.

    ``form="mean"`` pools each prompt (a vector for any positions). ``form="positional"`` keeps
    the per-position difference ``(tokens, hidden)``, the paper's original variant: apply it with
    ``Steering(v, positions="actadd")`` to add it to the first tokens of the prompt. The shorter
    prompt is right-padded with space tokens, as the paper's code does.
    """
    if form == "mean":
        vec = mean_diff(sm, [(positive, negative)], layers, read=read)
        return SteeringVector(vec.directions, replace(vec.meta, method="actadd"))
    if form != "positional":
        raise SteeringSpecError(f"form must be 'mean' or 'positional', got {form!r}")
    chosen = chosen_layers(sm, layers)
    pos, neg = sm.encode(positive), sm.encode(negative)
    space = sm.tokenizer(" ", add_special_tokens=False)["input_ids"] or [sm.pad_token_id]
    width = max(len(pos), len(neg))
    pos = pos + space[-1:] * (width - len(pos))
    neg = neg + space[-1:] * (width - len(neg))
    states = sm.hidden_states_of_ids([pos, neg], chosen)
    directions = {layer: states[layer][0] - states[layer][1] for layer in chosen}
    source = {"positive": str(positive), "negative": str(negative), "form": form}
    return SteeringVector(directions, vector_meta(sm, "actadd", source, chosen))
