"""Preparing a preset's vector: extract (or distill) it on a live model and write it to
actsteer's cache, where ``actsteer.sources.prepared`` reads it. The explicit step that
resolving never takes: a preset's first use in-process, ``presets.build`` and ``actsteer serve``
call it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..core.vector import SteeringVector
from ..errors import SteeringSpecError
from ..presets import Preset
from ..sources.prepared import cache_hint, cache_path, read_vector, write_vector

if TYPE_CHECKING:
    from ..runtime.surface import Steerable


def prepare(sm: Steerable, preset: Preset, progress: bool | None = None) -> SteeringVector:
    """The preset's raw vector for ``sm``: prepared already (shipped or cached), else extracted
    (distilled) now and cached."""
    found = read_vector(sm.fingerprint, preset)
    if found is not None:
        return found
    if preset.method == "distill" and progress is not False:
        print(
            f"actsteer: distilling preset {preset.name!r} for {sm.fingerprint.name} once "
            f"(a few minutes on a CPU for a small model); it is then cached in {cache_hint()}",
            file=sys.stderr,
            flush=True,
        )
    vec = extract(sm, preset, progress=progress)
    write_vector(cache_path(sm.fingerprint, preset), vec)
    return vec


def extract(sm: Steerable, preset: Preset, progress: bool | None = None) -> SteeringVector:
    """Run the preset's extraction on ``sm`` (no cache) at every layer, so expressions such as
    ``love@4-8`` can pick any layers (distilled presets: every layer they train, all but 0);
    the default layers are recorded in the metadata."""
    from ..train import extract as ex

    layers = list(range(sm.num_layers))
    if preset.method == "distill":
        vec = ex.distill(
            sm,
            preset.system_prompt or "",
            preset.inputs,
            positions=preset.positions,
            progress=progress,
            **dict(preset.distill),
        )
    elif preset.method == "prompt_template":
        vec = ex.prompt_template(
            sm,
            preset.system_prompt or "",
            preset.inputs,
            layers,
            read=preset.read or "suffix",
            progress=progress,
        )
    elif preset.method in ("mean_diff", "pca"):
        fn = ex.mean_diff if preset.method == "mean_diff" else ex.pca
        vec = fn(sm, list(preset.pairs), layers, read=preset.read or "mean", progress=progress)
    else:
        raise SteeringSpecError(f"preset {preset.name!r}: unknown method {preset.method!r}")
    extra = {"preset": preset.name, "preset_hash": preset.content_hash, "check": preset.check}
    return vec.with_meta(
        recommended_layers=tuple(preset.layer_indices(sm.num_layers)),
        recommended_coeff=preset.coeff,
        extra={**vec.meta.extra, **extra},
    )
