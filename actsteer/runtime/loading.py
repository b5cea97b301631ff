"""Loading a Hugging Face model, with errors that say what is wrong before minutes are spent.

``check_model`` is cheap (no download, no weights): a malformed Hub id, a local path that does
not exist, a Hub id that is not cached while ``HF_HUB_OFFLINE`` is set, and model kwargs
(``dtype``, ``device_map``) that transformers would refuse are a ``ModelLoadError`` at once, so
the adapters can refuse them at construction. ``load_pretrained`` turns what transformers raises
while loading into the same error, naming the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..default_model import is_embedded
from ..errors import ModelLoadError

#: ``device_map`` strategies transformers and accelerate accept besides a device name.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_model(model_id: str | None, model_kwargs: Mapping[str, Any] | None = None) -> None:
    """Refuse a model that surely cannot load (``ModelLoadError``); anything that may load
    passes (a Hub id is only looked up when it loads). None is the embedded model."""
    check_model_kwargs(model_kwargs or {})
    if is_embedded(model_id):
        return
    if not isinstance(model_id, str) or not model_id.strip():
        raise ModelLoadError(f"a model is a Hugging Face id or a local path, got {model_id!r}")
    if Path(model_id).expanduser().is_dir():
        return
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or "\\" in model_id:
        raise ModelLoadError(f"cannot load model {model_id!r}: no such directory")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError as exc:
        raise ModelLoadError(
            f"cannot load model {model_id!r}: not a local directory, nor a Hugging Face id ({exc})"
        ) from None
    if constants.HF_HUB_OFFLINE and try_to_load_from_cache(model_id, "config.json") is None:
        raise ModelLoadError(
            f"cannot load model {model_id!r}: HF_HUB_OFFLINE is set and it is not in the "
            "Hugging Face cache; download it first, or pass a local directory (model=None is "
            "the embedded SmolLM2-135M-Instruct)"
        )


def check_model_kwargs(kwargs: Mapping[str, Any]) -> None:
    """``dtype`` and ``device_map`` values transformers would refuse, refused now."""
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    named = isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype)
    if not (dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto" or named):
        raise ModelLoadError(
            f"model_kwargs dtype {dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16', "
            "torch.float16 or 'auto')"
        )
    device_map = kwargs.get("device_map")
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        try:
            torch.device(device_map)
        except (RuntimeError, ValueError):
            raise ModelLoadError(
                f"model_kwargs device_map {device_map!r} is neither a device ('cpu', 'cuda:0') "
                f"nor one of {DEVICE_MAP_STRATEGIES}"
            ) from None


def load_pretrained(
    model_id: str,
    revision: str | None,
    tokenizer_kwargs: Mapping[str, Any] | None,
    model_kwargs: dict[str, Any],
) -> tuple[Any, Any]:
    """The tokenizer and causal LM of ``model_id``; a failure is a ``ModelLoadError``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model(model_id, model_kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_id, revision=revision, **(tokenizer_kwargs or {})
        )
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, **model_kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model {model_id!r}: {first}") from exc
    return tokenizer, model
