"""Behaviour checks: does a reply show the behaviour a preset is for? One check per preset id.

Each check maps a reply to a ``CheckResult`` (passed, a graded score, a short reason). They are
deliberately simple and documented, so a user can see exactly what "success" means:

* ``json``: the whole reply parses as a JSON object or array (code fences allowed); a bare number
  or string ("2222", "null") is not the JSON a user asked for. Score 0.5 when an object can at
  least be extracted from it (``json-extract`` passes then).
* ``no-disclaimer``: none of the disclaimer patterns in ``DISCLAIMER_PATTERNS`` occurs.
* ``french``: py3langid (model in its wheel) classifies the reply as French.
* ``sentiment``: VADER compound score (lexicon in its wheel) >= 0.5.
* ``topic:<name>``: a word of the keyword family ``TOPICS[name]`` occurs.
* ``concise``: at most 30 words and 2 sentences, and the reply ended on its own: a reply cut by
  the token cap (``finish_reason == "length"``) says nothing about its length and fails.
* ``formal``: formal markers outnumber informal ones (``FORMAL`` / ``INFORMAL`` lexicons,
  contractions and "!" count as informal) and none of the informal slang occurs.
* ``friendly``: VADER compound >= 0.3 and at least one word of the ``FRIENDLY`` lexicon.
* ``ifeval:<instruction id>``: IFEval's own checker, strict (``actsteer.evaluate.ifeval``, the
  ``ifeval`` extra), with that module's fixed arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check on one reply."""

    passed: bool
    score: float
    reason: str = ""


DISCLAIMER_PATTERNS: tuple[str, ...] = (
    r"\bas an? (ai|a\.i\.|artificial intelligence|language model|llm|chatbot|assistant)\b",
    # "I'm an AI", "I'm just a language model", "I'm a music AI", "I am a helpful chatbot"
    r"\b(i am|i'm) (just |only |merely )?an? ((?!of\b|about\b)[\w-]+ ){0,2}(ai|artificial "
    r"intelligence|"
    r"language model|llm|chatbot|virtual assistant|computer program)\b",
    r"\blarge language model\b",
    r"\bai language model\b",
    r"\bi (do not|don't) have (personal )?(opinions|feelings|preferences|experiences|emotions|"
    r"a body|beliefs)\b",
    r"\bi (cannot|can't|am unable to) (feel|experience|browse|have opinions)\b",
)
_DISCLAIMER = re.compile("|".join(DISCLAIMER_PATTERNS), re.IGNORECASE)

TOPICS: dict[str, tuple[str, ...]] = {
    "dogs": (
        "dog",
        "dogs",
        "puppy",
        "puppies",
        "pup",
        "canine",
        "labrador",
        "retriever",
        "beagle",
        "poodle",
        "terrier",
        "bark",
        "barked",
        "barking",
        "woof",
        "leash",
    ),
}
FORMAL = (
    "please",
    "kindly",
    "regards",
    "sincerely",
    "therefore",
    "furthermore",
    "however",
    "would",
    "shall",
    "assistance",
    "inform",
    "regarding",
    "accordingly",
    "moreover",
    "respectfully",
    "appreciate",
    "request",
    "hereby",
    "consequently",
    "dear",
)
INFORMAL = (
    "hey",
    "lol",
    "gonna",
    "wanna",
    "gotta",
    "dude",
    "yeah",
    "yep",
    "cool",
    "awesome",
    "u",
    "ur",
    "btw",
    "omg",
    "stuff",
    "kinda",
    "sorta",
    "yo",
    "guys",
    "haha",
)
FRIENDLY = (
    "glad",
    "happy",
    "love",
    "wonderful",
    "great",
    "hope",
    "enjoy",
    "thank",
    "thanks",
    "welcome",
    "friend",
    "delighted",
    "pleasure",
    "smile",
    "warm",
    "kind",
    "cheerful",
    "lovely",
    "fantastic",
    "awesome",
)

_WORD = re.compile(r"[a-zA-Z']+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _strip_fences(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def extract_json(text: str) -> object | None:
    """The first JSON object or array that can be decoded from anywhere in ``text``."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                value, _ = decoder.raw_decode(text[i:])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict | list):
                return value
    return None


def check_json(reply: str) -> CheckResult:
    try:
        value = json.loads(_strip_fences(reply))
        if isinstance(value, dict | list):
            return CheckResult(True, 1.0, "the whole reply is JSON")
    except json.JSONDecodeError:
        pass
    if extract_json(reply) is not None:
        return CheckResult(False, 0.5, "a JSON value can be extracted, with text around it")
    return CheckResult(False, 0.0, "no JSON found")


def check_json_extract(reply: str) -> CheckResult:
    found = extract_json(reply) is not None
    return CheckResult(found, float(found), "JSON extracted" if found else "no JSON found")


def check_no_disclaimer(reply: str) -> CheckResult:
    match = _DISCLAIMER.search(reply)
    if match:
        return CheckResult(False, 0.0, f"disclaimer: {match.group(0)!r}")
    return CheckResult(True, 1.0, "no disclaimer")


def needs_eval_extra(module: str) -> Any:
    """Import an evaluation dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this check needs {module.split('.')[0]}: pip install 'actsteer[eval]'"
        ) from exc


@cache
def _vader():
    return needs_eval_extra("vaderSentiment.vaderSentiment").SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER compound sentiment in [-1, 1]."""
    return float(_vader().polarity_scores(text)["compound"])


def check_sentiment(reply: str) -> CheckResult:
    s = sentiment(reply)
    return CheckResult(s >= 0.5, s, f"VADER compound {s:+.2f}")


def check_french(reply: str) -> CheckResult:
    py3langid = needs_eval_extra("py3langid")
    if not reply.strip():
        return CheckResult(False, 0.0, "empty reply")
    lang, _ = py3langid.classify(reply)
    return CheckResult(lang == "fr", float(lang == "fr"), f"detected language {lang!r}")


def check_topic(topic: str) -> Callable[[str], CheckResult]:
    words = set(TOPICS[topic])

    def check(reply: str) -> CheckResult:
        hits = [w for w in _words(reply) if w in words]
        return CheckResult(bool(hits), float(len(hits)), f"{len(hits)} {topic} word(s)")

    return check


def check_concise(reply: str) -> CheckResult:
    n = len(reply.split())
    sentences = len([s for s in re.split(r"[.!?]+", reply) if s.strip()])
    ok = 0 < n <= 30 and sentences <= 2
    return CheckResult(ok, -float(n), f"{n} words, {sentences} sentence(s)")


def formality(text: str) -> float:
    """Formal minus informal markers per 10 words (contractions and '!' count as informal)."""
    words = _words(text)
    if not words:
        return 0.0
    formal = sum(w in FORMAL for w in words)
    informal = sum(w in INFORMAL for w in words) + sum("'" in w for w in words) + text.count("!")
    return 10.0 * (formal - informal) / len(words)


def check_formal(reply: str) -> CheckResult:
    score = formality(reply)
    slang = any(w in INFORMAL for w in _words(reply))
    return CheckResult(score > 0 and not slang, score, f"formality {score:+.2f}")


def check_friendly(reply: str) -> CheckResult:
    s = sentiment(reply)
    hits = sum(w in FRIENDLY for w in _words(reply))
    return CheckResult(s >= 0.3 and hits >= 1, s, f"VADER {s:+.2f}, {hits} friendly word(s)")


CHECKS: dict[str, Callable[[str], CheckResult]] = {
    "json": check_json,
    "json-extract": check_json_extract,
    "no-disclaimer": check_no_disclaimer,
    "french": check_french,
    "sentiment": check_sentiment,
    "topic:dogs": check_topic("dogs"),
    "concise": check_concise,
    "formal": check_formal,
    "friendly": check_friendly,
}


def get_check(check_id: str) -> Callable[[str], CheckResult]:
    """The check called ``check_id`` (``topic:<name>`` for any keyword family in TOPICS)."""
    if check_id in CHECKS:
        return CHECKS[check_id]
    if check_id.startswith("topic:") and check_id[6:] in TOPICS:
        return check_topic(check_id[6:])
    if check_id.startswith("ifeval:"):
        return _ifeval_check(check_id[len("ifeval:") :])
    from ..errors import SteeringSpecError

    raise SteeringSpecError(f"unknown behaviour check {check_id!r}; known: {sorted(CHECKS)}")


@cache
def _ifeval_check(instruction_id: str) -> Callable[[str], CheckResult]:
    from .ifeval import instruction

    rule = instruction(instruction_id)

    def check(reply: str) -> CheckResult:
        strict, loose = rule.judge(reply)
        return CheckResult(strict, (strict + loose) / 2, f"IFEval strict {strict}, loose {loose}")

    return check


#: Checks that a reply cut by the token cap cannot pass.
NEEDS_COMPLETE_REPLY = frozenset({"concise"})


def judge(check_id: str, reply: str, finish_reason: str | None = None) -> CheckResult:
    """Run check ``check_id`` on a reply, failing checks in ``NEEDS_COMPLETE_REPLY`` when the
    reply was cut by the token cap (``finish_reason == "length"``)."""
    fn = get_check(check_id)
    if finish_reason == "length" and check_id in NEEDS_COMPLETE_REPLY:
        return CheckResult(False, fn(reply).score, "cut by the token cap")
    return fn(reply)
