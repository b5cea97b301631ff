"""Prepared preset vectors: the ones that ship for the embedded model and actsteer's on-disk
cache (``cache_root()/vectors``, keyed by the model fingerprint and the preset's content hash).
Reading never trains: a miss is ``None`` here, and the source decides whether to prepare one
(``actsteer.train.prepare``) or refuse. A corrupt, foreign or stale file counts as a miss."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import weakref
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.meta import ModelFingerprint
from ..core.vector import SteeringVector
from ..default_model import cache_root
from ..errors import PresetNotPreparedError, SteeringSpecError, VectorFileError
from ..presets import SHIPPED, Preset, get
from . import VectorSource


def cache_path(model: ModelFingerprint, preset: Preset) -> Path:
    """Where the cached vector of ``preset`` for ``model`` lives (whether or not it exists)."""
    fp = json.dumps(model.to_dict(), sort_keys=True).encode()
    model_key = hashlib.sha256(fp).hexdigest()[:12]
    short = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.name)[-48:]
    return (
        cache_root()
        / "vectors"
        / f"{short}-{model_key}"
        / f"{preset.name}-{preset.content_hash}.safetensors"
    )


def shipped_path(preset: Preset) -> Path | None:
    """Where a vector for the embedded model ships for ``preset`` (None: not a file here)."""
    entry = resources.files("actsteer.presets").joinpath(SHIPPED, f"{preset.name}.safetensors")
    return Path(str(entry)) if entry.is_file() else None


def cache_hint() -> str:
    """The cache folder, for messages."""
    return str(cache_root() / "vectors")


def read_vector(model: ModelFingerprint, preset: Preset) -> SteeringVector | None:
    """The preset's raw vector for ``model`` if one is prepared: the shipped one when it was
    made for this model and this preset, else a valid cached one; None otherwise."""
    for path in (shipped_path(preset), cache_path(model, preset)):
        if path is not None and path.is_file():
            vec = _valid(path, model, preset)
            if vec is not None:
                return vec
    return None


def write_vector(path: Path, vec: SteeringVector) -> None:
    """Save ``vec`` to ``path`` atomically: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        vec.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _valid(path: Path, model: ModelFingerprint, preset: Preset) -> SteeringVector | None:
    """The vector in ``path`` if it is readable, for this model, and made from this preset."""
    try:
        vec = SteeringVector.load(path, model=model)
    except (VectorFileError, SteeringSpecError, ValueError):
        return None  # corrupt or foreign: a miss
    return vec if vec.meta.extra.get("preset_hash") == preset.content_hash else None


def not_prepared(model: ModelFingerprint, name: str) -> PresetNotPreparedError:
    """The refusal of a source that cannot prepare a preset itself."""
    return PresetNotPreparedError(
        f"preset {name!r} has no vector prepared for {model.name} here, and this process does "
        "not train one: prepare it first (`actsteer serve` prepares every preset before it "
        "starts; `python -m actsteer.presets.build` for the embedded model)"
    )


#: Each source's ready preset vectors, ``{(name, layers): vector}``; gone with the source.
_READY: weakref.WeakKeyDictionary[Any, dict[tuple, SteeringVector]] = weakref.WeakKeyDictionary()


def ready(
    source: VectorSource,
    name: str,
    layers: Sequence[int] | None,
    raw: Callable[[Preset], SteeringVector | None],
) -> SteeringVector:
    """Preset ``name``'s vector on its default layers (or ``layers``), scaled so that
    coefficient 1 is its default strength (``json:4`` is four times the default). ``raw`` gives
    the preset's prepared vector at every layer, or None (refused: ``PresetNotPreparedError``).
    Memoised per source: resolving runs on every call."""
    preset = get(name)
    key = (name, None if layers is None else tuple(layers))
    memo = _READY.setdefault(source, {})
    if key in memo:
        return memo[key]
    vec = raw(preset)
    if vec is None:
        raise not_prepared(source.fingerprint, name)
    vec = vec.select(layers if layers is not None else preset.layer_indices(source.num_layers))
    if preset.scale == "relative":
        norms = source.activation_norms()
        vec = SteeringVector(
            {
                x: d / d.norm().clamp_min(1e-12) * norms[x] * preset.coeff
                for x, d in vec.directions.items()
            },
            vec.meta,
        )
    else:
        vec = vec * preset.coeff
    memo[key] = vec = vec.with_meta(recommended_coeff=1.0)
    return vec
