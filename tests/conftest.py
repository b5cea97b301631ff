"""Shared fixtures: tiny random models built in memory (seconds) and the embedded real model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from actsteer import SteeredModel, SteeringVector
from actsteer.cli import launch

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (259 ids) with a ChatML template, built without any download."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


VOCAB = 3 + 256
COMMON = {"vocab_size": VOCAB, "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": None}

TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,  # room for a tools block in byte-level tokens
    ),
    "qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    ),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=4, n_head=4, n_positions=512),
    "gpt_neox": dict(
        model_type="gpt_neox",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=512,
    ),
    "gemma": dict(
        model_type="gemma",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
    ),
}
MORE_CONFIGS: dict[str, dict] = {
    "mistral": dict(
        model_type="mistral",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    ),
    "qwen3": dict(
        model_type="qwen3",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
    ),
    "gemma2": dict(
        model_type="gemma2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
    ),
    "phi3": dict(
        model_type="phi3",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    ),
    "opt": dict(
        model_type="opt",
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=512,
        word_embed_proj_dim=64,
    ),
}


def build_tiny(kind: str, seed: int = 0) -> SteeredModel:
    """A randomly initialised model of family ``kind`` wrapped in a SteeredModel."""
    from transformers import AutoConfig

    spec = dict({**TINY_CONFIGS, **MORE_CONFIGS}[kind])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, **COMMON, **spec)
    config.initializer_range = 0.2  # peaked logits: greedy choices are not near-ties
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return SteeredModel.from_model(model, tiny_tokenizer(), name=f"tiny-{kind}")


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, SteeredModel]:
    return {}


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny(request, tiny_models) -> SteeredModel:
    """Each tiny family in turn (built once per session)."""
    if request.param not in tiny_models:
        tiny_models[request.param] = build_tiny(request.param)
    return tiny_models[request.param]


@pytest.fixture
def llama(tiny_models) -> SteeredModel:
    if "llama" not in tiny_models:
        tiny_models["llama"] = build_tiny("llama")
    return tiny_models["llama"]


def random_vector(sm: SteeredModel, layers, scale: float = 1.0, seed: int = 1) -> SteeringVector:
    """A random direction per layer, sized relative to the layer's typical activation."""
    g = torch.Generator().manual_seed(seed)
    norms = sm.activation_norms()
    out = {}
    for layer in layers:
        d = torch.randn(sm.hidden_size, generator=g)
        out[layer] = d / d.norm() * norms[layer] * scale
    return SteeringVector(out)


@pytest.fixture(scope="session")
def real() -> SteeredModel:
    """The embedded SmolLM2-135M-Instruct (converted once into $ACTSTEER_CACHE)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SteeredModel.default(progress=False)


# -- a real vLLM server for tests/vllm -------------------------------------------------------------
# vLLM lives in its own venv (``make install-vllm`` builds ``.venv-vllm``: its pinned transformers
# differs from ``.venv``'s). Without it those tests skip, unless ``ACTSTEER_REQUIRE_VLLM=1``
# (``make test``, CI), where they fail. (Here, not in tests/vllm/conftest.py: two modules named
# ``conftest`` would shadow each other's lazy imports.)
ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("ACTSTEER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


@pytest.fixture(scope="session")
def vectors(tmp_path_factory, real) -> Path:
    """The server's vectors folder: ``mine`` is the local ``love`` preset's vector, ``front``
    a per-position ActAdd vector (Love - Hate at layer 6, Turner et al.'s form)."""
    from actsteer.train import extract

    folder = tmp_path_factory.mktemp("vectors")
    real.preset("love").save(folder / "mine.safetensors")
    extract.actadd(real, "Love", "Hate", [6], form="positional").save(folder / "front.safetensors")
    return folder


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """vLLM's venv's python (skips, or fails under ``ACTSTEER_REQUIRE_VLLM=1``, without it)."""
    if not VLLM_PYTHON.exists():
        message = f"vLLM is not installed at {VLLM_PYTHON} (run `make install-vllm`)"
        if os.environ.get("ACTSTEER_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def server(tmp_path_factory, vectors, vllm_python) -> Iterator[str]:
    """The server's ``/v1`` URL."""
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    try:
        # prompts over 48 tokens are prefilled in chunks: positions must stay right across them
        args = (*launch.EAGER_FP32, "--enforce-eager", "--max-num-batched-tokens", "48")
        running = launch.start(vllm_python, log, vectors=vectors, vllm_args=args, cwd=ROOT)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield running.url
    finally:
        running.stop()
