"""Real steering effects of the built-in presets on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from actsteer import Steering, presets
from actsteer.data import neutral_inputs, personal_questions
from actsteer.evaluate import fidelity
from actsteer.evaluate.checks import judge
from actsteer.train import extract as ex
from actsteer.train import prepare as train_prepare
from actsteer.train.distill.fidelity import fidelity_of
from actsteer.train.distill.loop import stacked
from actsteer.train.distill.teacher import teacher_examples
from actsteer.train.prepare import prepare

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


FRENCH = presets.get("french").system_prompt or ""


def test_distilled_presets_load_without_training(real, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a shipped preset was distilled again")

    monkeypatch.setattr(train_prepare, "extract", refuse)
    for name in ("json", "concise", "french", "friendly", "no-disclaimer"):
        vec = prepare(real, presets.get(name))
        assert vec.meta.method == "distill" and vec.layers == tuple(range(1, 30))


def test_shipped_french_vector_reproduces_its_prompt_on_held_out_inputs(real):
    f = fidelity(real, FRENCH, "french", neutral_inputs("heldout"), max_new_tokens=24)
    assert f.removed >= 0.5, f


def test_shipped_french_vector_switches_free_running_replies_to_french(real):
    chats = [[{"role": "user", "content": x}] for x in neutral_inputs("heldout")]
    plain = real.generate_batch_detailed(chats, None, max_new_tokens=32)
    steered = real.generate_batch_detailed(chats, "french", max_new_tokens=32)

    def share(gens) -> float:
        return sum(judge("french", g.text, g.finish_reason).passed for g in gens) / len(gens)

    assert share(plain) == 0.0
    assert share(steered) >= 0.3, [g.text for g in steered]


def test_a_short_distillation_beats_the_mean_difference(real):
    held_out = neutral_inputs("heldout")[:8]
    distilled = ex.distill(
        real, FRENCH, neutral_inputs("train")[:40], steps=12, eval_every=4, progress=False
    )
    mean_difference = ex.prompt_template(real, FRENCH, layers=[12], progress=False)
    f_distilled = fidelity(real, FRENCH, distilled, held_out)
    f_mean = fidelity(real, FRENCH, mean_difference, held_out)
    assert f_distilled.removed > f_mean.removed + 0.2, (f_distilled, f_mean)
    assert f_distilled.removed > 0.2, f_distilled


@pytest.mark.parametrize("name", ["no-disclaimer", "json"])
def test_a_shipped_vector_on_top_of_its_own_prompt_makes_no_check_worse(real, name):
    """Stack-safe distillation: a user who sends the system prompt *and* its vector (during a
    migration, or through a template that kept the prompt) gets replies that pass the check at
    least as often as with the prompt alone, on held-out prompts."""
    preset = presets.get(name)
    held_out = (
        personal_questions("heldout") if name == "no-disclaimer" else neutral_inputs("heldout")
    )
    chats = [
        [{"role": "system", "content": preset.system_prompt}, {"role": "user", "content": x}]
        for x in held_out
    ]
    alone = real.generate_batch_detailed(chats, None, max_new_tokens=48)
    both = real.generate_batch_detailed(chats, name, max_new_tokens=48)
    passed_alone = [judge(preset.check, g.text, g.finish_reason).passed for g in alone]
    passed_both = [judge(preset.check, g.text, g.finish_reason).passed for g in both]
    assert sum(passed_both) >= sum(passed_alone), (sum(passed_both), sum(passed_alone))
    assert sum(a.text != b.text for a, b in zip(alone, both, strict=True)) > 0  # it did act


@pytest.mark.parametrize("name", ["no-disclaimer", "json"])
def test_a_shipped_vector_barely_moves_the_prompted_model(real, name):
    """Teacher-forced on the prompted model's own replies to held-out inputs, adding the vector
    on top of its prompt moves the model by less than half of what removing the prompt does
    (on the embedded model the json prompt makes no reply pass its check, so this is where
    its stacking shows)."""
    preset = presets.get(name)
    held_out = (personal_questions if name == "no-disclaimer" else neutral_inputs)("heldout")
    examples = teacher_examples(real, preset.system_prompt or "", held_out[:16], top_k=1)
    row = real.row_spec(name)[0]
    on_top = fidelity_of(real, stacked(examples), row).kl_vector
    without_prompt = fidelity_of(real, examples, None).kl_none
    assert on_top < 0.5 * without_prompt, (on_top, without_prompt)
