"""Built-in behaviours as data (one JSON file each) and the on-disk cache of their vectors.

A preset names a method and its inputs (pairs or a system prompt), default layers as fractions of
depth (so it transfers across model sizes), a default coefficient and the id of the behaviour
check that evaluates it. Its vector is extracted on first use for a model and cached under
``cache_root()/vectors``, keyed by the model fingerprint and the preset's content hash; a corrupt
or unreadable cache entry is recomputed, never trusted.

Distilled presets (``"method": "distill"``: a system prompt compiled by context distillation, see
``actsteer.train.distill``) take minutes to train, so their vectors for the embedded model
ship in ``vectors/`` (rebuilt by ``python -m actsteer.presets.build``); any other model distills
them once on first use, with a notice and a progress bar, and caches them like the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import weakref
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..core.vector import SteeringVector
from ..errors import PresetNotPreparedError, SteeringSpecError, VectorFileError

if TYPE_CHECKING:
    from ..runtime.model import SteeredModel

_FIELDS = {
    "name",
    "instruction",
    "description",
    "method",
    "pairs",
    "system_prompt",
    "inputs",
    "read",
    "layers",
    "coeff",
    "scale",
    "positions",
    "check",
    "distill",
}

#: Where the distilled presets' vectors for the embedded model ship.
SHIPPED = "vectors"


@dataclass(frozen=True)
class Preset:
    """A built-in behaviour: how to extract its vector and how to apply it by default."""

    name: str
    description: str
    method: Literal["mean_diff", "pca", "prompt_template", "distill"]
    layers: tuple[float, float] | None
    """Default layers as fractions of depth; None (distilled presets): every layer but 0."""
    coeff: float
    check: str
    scale: Literal["relative", "raw"] = "raw"
    positions: str = "all"
    read: str | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    system_prompt: str | None = None
    inputs: tuple[str, ...] | None = None
    instruction: str | None = None
    distill: tuple[tuple[str, Any], ...] = ()
    """Training settings passed to ``extract.distill`` (steps, lr, ...), as sorted pairs."""

    @property
    def prompt_equivalent(self) -> str | None:
        """The system prompt this behaviour is compared against in evaluations."""
        return self.system_prompt or self.instruction

    @property
    def content_hash(self) -> str:
        """Hash of everything that determines the extracted vector."""
        from ..data import neutral_inputs

        inputs = self.inputs
        if inputs is None and self.method in ("prompt_template", "distill"):
            inputs = tuple(neutral_inputs("train"))  # the shipped default inputs
        parts: list[Any] = [self.method, self.read, self.pairs, self.system_prompt, inputs]
        if self.method == "distill":  # what else determines a distilled vector
            from ..train.distill.loop import config

            settings = dataclasses.asdict(config(**dict(self.distill)))  # with the defaults
            parts += [self.positions, settings, tuple(neutral_inputs("heldout"))]
        blob = json.dumps(parts, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def layer_indices(self, num_layers: int) -> list[int]:
        """The default layers on a model of ``num_layers`` decoder blocks."""
        if self.layers is None:
            return list(range(1, num_layers)) or [0]
        lo, hi = (round(f * (num_layers - 1)) for f in self.layers)
        return list(range(max(0, lo), min(num_layers - 1, hi) + 1))


def _parse(name: str, data: dict[str, Any]) -> Preset:
    unknown = set(data) - _FIELDS
    if unknown:
        raise SteeringSpecError(f"preset {name!r}: unknown fields {sorted(unknown)}")
    try:
        return Preset(
            name=data["name"],
            description=data["description"],
            method=data["method"],
            layers=(
                (float(data["layers"][0]), float(data["layers"][1]))
                if data.get("layers") is not None
                else None
            ),
            coeff=float(data["coeff"]),
            check=data["check"],
            scale=data.get("scale", "raw"),
            positions=data.get("positions", "all"),
            read=data.get("read"),
            pairs=tuple((str(p), str(n)) for p, n in data.get("pairs", ())),
            system_prompt=data.get("system_prompt"),
            inputs=tuple(data["inputs"]) if data.get("inputs") else None,
            instruction=data.get("instruction"),
            distill=tuple(sorted((data.get("distill") or {}).items())),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SteeringSpecError(f"preset {name!r} is malformed: {exc}") from exc


@cache
def _all() -> dict[str, Preset]:
    out = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            preset = _parse(entry.name, json.loads(entry.read_text(encoding="utf-8")))
            out[preset.name] = preset
    return out


def list_presets() -> list[Preset]:
    """Every built-in preset, sorted by name."""
    return list(_all().values())


def names() -> list[str]:
    return sorted(_all())


def get(name: str) -> Preset:
    """The preset called ``name``; an unknown name gets a "did you mean" hint."""
    presets = _all()
    if name in presets:
        return presets[name]
    from ..core.expressions import suggest

    hint = suggest(name, presets)
    raise SteeringSpecError(
        f"unknown preset {name!r}"
        + (f"; did you mean {hint!r}?" if hint else "")
        + f" (presets: {', '.join(sorted(presets))})"
    )


def cache_path(sm: SteeredModel, preset: Preset) -> Path:
    from ..default_model import cache_root

    fp = json.dumps(sm.fingerprint.to_dict(), sort_keys=True).encode()
    model_key = hashlib.sha256(fp).hexdigest()[:12]
    short = "".join(c if c.isalnum() or c in "-_." else "_" for c in sm.fingerprint.name)[-48:]
    return (
        cache_root()
        / "vectors"
        / f"{short}-{model_key}"
        / f"{preset.name}-{preset.content_hash}.safetensors"
    )


def extract(sm: SteeredModel, preset: Preset, progress: bool | None = None) -> SteeringVector:
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


def read_vector(sm: SteeredModel, preset: Preset) -> SteeringVector | None:
    """The preset's raw vector for ``sm`` if one is prepared: the shipped one when it was made
    for this model and this preset, else a valid cached one; None otherwise. Never trains."""
    for path in (shipped_path(preset), cache_path(sm, preset)):
        if path is not None and path.is_file():
            vec = _valid(path, sm, preset)
            if vec is not None:
                return vec
    return None


def load_or_extract(
    sm: SteeredModel, preset: Preset, progress: bool | None = None
) -> SteeringVector:
    """The preset's raw vector for ``sm``: prepared (``read_vector``), else extracted
    (distilled) now and cached."""
    found = read_vector(sm, preset)
    if found is not None:
        return found
    if preset.method == "distill" and progress is not False:
        print(
            f"actsteer: distilling preset {preset.name!r} for {sm.fingerprint.name} once "
            f"(a few minutes on a CPU for a small model); it is then cached in {cache_root_hint()}",
            file=sys.stderr,
            flush=True,
        )
    path = cache_path(sm, preset)
    vec = extract(sm, preset, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        vec.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return vec


def shipped_path(preset: Preset) -> Path | None:
    """Where a vector for the embedded model ships for ``preset`` (None: not a file here)."""
    entry = resources.files(__package__).joinpath(SHIPPED, f"{preset.name}.safetensors")
    return Path(str(entry)) if entry.is_file() else None


def cache_root_hint() -> str:
    from ..default_model import cache_root

    return str(cache_root() / "vectors")


def _valid(path: Path, sm: SteeredModel, preset: Preset) -> SteeringVector | None:
    """The vector in ``path`` if it is readable, for this model, and made from this preset."""
    try:
        vec = SteeringVector.load(path, model=sm.fingerprint)
    except (VectorFileError, SteeringSpecError, ValueError):
        return None  # corrupt or foreign: recompute and overwrite
    return vec if vec.meta.extra.get("preset_hash") == preset.content_hash else None


#: Each model's ready preset vectors, ``{(name, layers): vector}``; gone with the model.
_READY: weakref.WeakKeyDictionary[Any, dict[tuple, SteeringVector]] = weakref.WeakKeyDictionary()


def ready_vector(
    sm: SteeredModel,
    name: str,
    layers: list[int] | tuple[int, ...] | None = None,
    progress: bool | None = None,
    *,
    prepare: bool = True,
) -> SteeringVector:
    """The preset's vector on its default layers (or ``layers``), scaled so that coefficient 1 is
    its default strength: ``json:4`` is then four times the default. ``prepare=False``: only a
    prepared vector, else ``PresetNotPreparedError`` (nothing is trained)."""
    preset = get(name)
    key = (name, None if layers is None else tuple(layers))
    memo = _READY.setdefault(sm, {})  # per model: resolve is per call
    if key in memo:
        return memo[key]
    raw = load_or_extract(sm, preset, progress=progress) if prepare else read_vector(sm, preset)
    if raw is None:
        raise PresetNotPreparedError(
            f"preset {name!r} has no vector prepared for {sm.fingerprint.name} here, and this "
            "process does not train one: prepare it first (`actsteer serve` prepares every "
            "preset before it starts; `python -m actsteer.presets.build` for the embedded model)"
        )
    vec = raw.select(layers if layers is not None else preset.layer_indices(sm.num_layers))
    if preset.scale == "relative":
        norms = sm.activation_norms()
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
