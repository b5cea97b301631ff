"""Per-row combination: a row's ``Steering`` values become the per-layer tensors the hooks add
(``compile_row``), and the rows of a batch become one hook ``Plan`` (``plan``). All of the
combine math between resolution and the hooks is here: deltas with the same positions and
operator add up per layer (``vector.add_aligned``), ablation directions stack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..core.steering import Steering
from ..core.vector import ModelFingerprint, add_aligned
from ..errors import SteeringSpecError
from . import hooks

Compiled = tuple[hooks.RowSpec, str | None]
"""One row's per-layer tensors by ``(positions, operator)``, and its printable steering."""

NO_STEERING: Compiled = ({}, None)


def compile_row(
    steerings: Sequence[Steering], model: ModelFingerprint, norms: Mapping[int, float]
) -> Compiled:
    """One row's steering as per-layer tensors for ``model`` (``norms``: each layer's typical
    activation norm, for relative scaling and the magnitude checks)."""
    steerings = [s for s in steerings if not s.is_zero]
    if not steerings:
        return NO_STEERING
    row: dict[tuple[str, str], tuple[dict[int, torch.Tensor], float]] = {}
    for s in steerings:
        deltas = s.layer_deltas(model, norms)
        key = (s.positions, s.operator)
        strength = s.coeff if s.operator == "ablate" else 1.0
        if key not in row:
            row[key] = (dict(deltas), strength)
            continue
        merged, old = row[key]
        if s.operator == "ablate" and old != strength:
            raise SteeringSpecError("ablations of different strengths cannot share a call")
        for layer, d in deltas.items():
            if layer not in merged:
                merged[layer] = d
            elif s.operator == "ablate":
                merged[layer] = torch.cat([merged[layer], d])
            else:
                merged[layer] = add_aligned(merged[layer], d)
    return row, " + ".join(s.describe() for s in steerings)


def plan(
    rows: Sequence[Compiled],
    *,
    prompt_len: int | torch.Tensor | None,
    starts: torch.Tensor | None,
    devices: Mapping[int, torch.device],
    dtypes: Mapping[int, torch.dtype],
) -> hooks.Plan | None:
    """The hook plan for a batch whose row ``i`` carries ``rows[i]``, with each layer's tensors
    on that layer's device and dtype; None when no row steers."""
    built = hooks.Plan.build(
        [r[0] for r in rows],
        prompt_len=prompt_len,
        starts=starts,
        descriptions=[r[1] or "" for r in rows],
    )
    return None if built is None else built.to(devices, dtypes)


def left_pad_plan(
    rows: Sequence[Compiled],
    mask: torch.Tensor,
    devices: Mapping[int, torch.device],
    dtypes: Mapping[int, torch.dtype],
    *,
    prompt_len: int | None = None,
) -> hooks.Plan | None:
    """``plan`` for a left-padded batch: each row's first real token from its attention mask;
    the prompt is the whole padded width unless ``prompt_len`` says otherwise."""
    starts = (mask == 0).sum(dim=1).cpu()
    width = mask.shape[1] if prompt_len is None else prompt_len
    return plan(rows, prompt_len=width, starts=starts, devices=devices, dtypes=dtypes)
