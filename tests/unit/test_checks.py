"""Behaviour checks and metrics on constructed inputs where the answer is known."""

from __future__ import annotations

import pytest
import torch

from actsteer import SteeringSpecError
from actsteer.evaluate import Fidelity, kl_divergence
from actsteer.evaluate.checks import extract_json, formality, get_check, sentiment


def test_kl_of_identical_distributions_is_zero_and_positive_otherwise():
    p = torch.log_softmax(torch.randn(5, 50), -1)
    assert torch.allclose(kl_divergence(p, p), torch.zeros(5), atol=1e-6)
    q = torch.log_softmax(torch.randn(5, 50), -1)
    assert (kl_divergence(p, q) > 0).all()


def test_fidelity_share():
    assert Fidelity(0.4, 0.1, 8, 100).removed == pytest.approx(0.75)
    assert Fidelity(0.4, 0.4, 8, 100).removed == 0.0
    assert Fidelity(0.0, 0.0, 8, 100).removed == 0.0


@pytest.mark.parametrize(
    ("check", "reply", "passed"),
    [
        ("json", '{"name": "Ada", "age": 36}', True),
        ("json", '```json\n{"a": [1, 2]}\n```', True),
        ("json", 'Sure! Here it is: {"a": 1}', False),
        ("json", "Ada is 36 years old.", False),
        ("json-extract", 'Sure! Here it is: {"a": 1} Hope that helps.', True),
        ("json-extract", "no braces at all", False),
        ("no-disclaimer", "As an AI language model, I do not have opinions.", False),
        ("no-disclaimer", "I'm just an AI, but Paris is lovely.", False),
        ("no-disclaimer", "I don't have personal preferences, but blue is popular.", False),
        ("no-disclaimer", "Paris is the capital of France.", True),
        ("no-disclaimer", "I'm a music AI designed to help with recommendations.", False),
        ("no-disclaimer", "I'm an AI assistant designed to help.", False),
        ("no-disclaimer", "I am a big fan of AI research.", True),
        ("no-disclaimer", "I'm a fan of AI art.", True),
        ("french", "Bonjour, je suis très heureux de vous aider aujourd'hui.", True),
        ("french", "Hello, I am very happy to help you today.", False),
        ("sentiment", "What a wonderful, lovely, happy day!", True),
        ("sentiment", "This is terrible and I hate it.", False),
        ("topic:dogs", "My puppy loves to fetch.", True),
        ("topic:dogs", "My cat loves to sleep.", False),
        ("concise", "Paris.", True),
        ("concise", " ".join(["word"] * 40) + ".", False),
        ("formal", "Dear Sir, I would kindly request your assistance regarding the invoice.", True),
        ("formal", "hey dude, gonna be late lol", False),
        ("friendly", "I'm so glad you asked, what a wonderful question!", True),
        ("friendly", "No.", False),
    ],
)
def test_checks_on_known_replies(check, reply, passed):
    assert get_check(check)(reply).passed is passed


def test_scores_order_as_expected():
    assert sentiment("I love this") > 0 > sentiment("I hate this")
    assert formality("Kindly confirm.") > formality("yeah cool lol!")
    assert extract_json("x [1, 2] y") == [1, 2]


def test_unknown_check_is_a_clear_error():
    with pytest.raises(SteeringSpecError, match="unknown behaviour check"):
        get_check("sparkle")
