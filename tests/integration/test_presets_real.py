"""Real steering effects of the built-in presets on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from actsteer import Steering
from actsteer.data import neutral_inputs
from actsteer.evaluate import fidelity

pytestmark = pytest.mark.integration

NEUTRAL_STARTS = [
    "I think that my neighbour is",
    "Yesterday I went to the market and",
    "My opinion of the new manager is",
    "The meeting this afternoon was",
    "When I opened the letter, I",
    "The train was late again, so",
    "Our new office building is",
    "The weather this week has been",
    "My cousin called me and said",
    "The report on my desk is",
    "After dinner we talked about",
    "The bus driver looked at me and",
]
PET_PROMPTS = [
    "Tell me about your favourite animal.",
    "What pet would you recommend for a family?",
    "Describe a day at the park.",
    "What makes a good companion?",
    "Write a sentence about your neighbour's garden.",
    "What do you like to do on weekends?",
    "Describe a typical morning walk.",
    "What animals live on a farm?",
]


def test_love_preset_raises_sentiment(real):
    vader = SentimentIntensityAnalyzer()
    plain = real.generate_batch(NEUTRAL_STARTS, None, max_new_tokens=24)
    loving = real.generate_batch(NEUTRAL_STARTS, "love", max_new_tokens=24)

    def score(texts: list[str]) -> float:
        return sum(vader.polarity_scores(t)["compound"] for t in texts) / len(texts)

    assert score(loving) > score(plain) + 0.2, (plain, loving)
    assert sum(a != b for a, b in zip(plain, loving)) >= 10


def test_dogs_preset_makes_answers_mention_dogs(real):
    def share(texts: list[str]) -> float:
        words = ("dog", "puppy", "puppies", "pup ", "canine", "labrador", "retriever", "beagle")
        return sum(any(w in t.lower() for w in words) for t in texts) / len(texts)

    chats = [[{"role": "user", "content": p}] for p in PET_PROMPTS]
    plain = real.generate_batch(chats, None, max_new_tokens=32)
    doggy = real.generate_batch(chats, "dogs", max_new_tokens=32)
    assert share(doggy) >= share(plain) + 0.5, (plain, doggy)


def test_prompt_template_vector_moves_toward_the_system_prompt(real):
    system = (
        "You are a warm, cheerful and friendly assistant. Be kind and encouraging in every reply."
    )
    held_out = neutral_inputs("heldout")[:8]
    f = fidelity(real, system, "friendly", held_out, max_new_tokens=16)
    assert f.kl_vector < f.kl_none, f
    assert f.removed > 0.1, f


def test_expressions_compose_presets_on_the_real_model(real):
    (s,) = real.resolve("love:2 - formal")
    assert s.describe() == "love:2 - formal"
    combined = real.generate(
        "My opinion of the new manager is", "love:2 - formal", max_new_tokens=12
    )
    assert combined == real.generate(
        "My opinion of the new manager is",
        Steering([(real.preset("love"), 2.0), (real.preset("formal"), -1.0)]),
        max_new_tokens=12,
    )
