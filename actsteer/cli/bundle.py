"""The serve bundle: what the vLLM plugin needs to know about the served model, written from the
Hugging Face model before the server starts (vLLM then owns the weights)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from .. import presets
from ..train.prepare import prepare as prepare_preset

if TYPE_CHECKING:
    from ..runtime.model import SteeredModel


def write_bundle(
    sm: SteeredModel,
    path: str | os.PathLike[str],
    *,
    vectors: str | os.PathLike[str] | None = None,
    prepare: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Write ``sm``'s fingerprint and activation norms to ``path``, after preparing the presets
    (``prepare``, default all) in actsteer's vector cache, where the plugin reads them."""
    names = presets.names() if prepare is None else list(prepare)
    for name in tqdm(names, desc="actsteer: preparing presets", disable=not progress):
        # the cache file itself, where the plugin reads it (not a vector memoised in this process)
        prepare_preset(sm, presets.get(name), progress=progress)
    data = {
        "fingerprint": sm.fingerprint.to_dict(),
        "norms": {str(k): v for k, v in sm.activation_norms().items()},
        "vectors": str(Path(vectors).resolve()) if vectors else None,
        "presets": names,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    return out
