"""Both adapters refuse the same bad steering at construction, with the same ActsteerError, and
speak the same option vocabulary where their frameworks allow it."""

from __future__ import annotations

import re

import pytest
from conftest import build_tiny

from actsteer import ActsteerError, OptionsError
from langchain_steer import ChatSteer
from langchain_steer import SteerLLM as LangChainLLM
from llamaindex_steer import SteerLLM as LlamaIndexLLM


@pytest.fixture(scope="module")
def sm():
    return build_tiny("llama")


ADAPTERS = [ChatSteer, LangChainLLM, LlamaIndexLLM]
BAD = [
    ({"steering": "jsno"}, "did you mean 'json'"),
    ({"steering": "json:4 +"}, "cannot parse steering expression"),
    ({"steering": 42}, "cannot steer with a int"),
    ({"steering": ["json", 3.5]}, "cannot steer with a float"),
    ({"steering": "json", "steering_coeff": float("nan")}, "steering_coeff must be a finite"),
    ({"steering": "json", "steering_positions": "middle"}, "unknown positions 'middle'"),
]


@pytest.mark.parametrize(("fields", "message"), BAD, ids=[m for _, m in BAD])
def test_the_same_bad_steering_raises_the_same_error_in_every_adapter(sm, fields, message):
    errors = []
    for cls in ADAPTERS:
        with pytest.raises(ActsteerError, match=message) as caught:
            cls(runtime=sm, **fields)
        errors.append((type(caught.value), str(caught.value)))
    assert len(set(errors)) == 1, errors  # same class, same message


@pytest.mark.parametrize("cls", ADAPTERS)
def test_max_tokens_and_max_new_tokens_mean_the_same(sm, cls):
    a, b = cls(runtime=sm, max_tokens=7), cls(runtime=sm, max_new_tokens=7)
    field = "max_new_tokens" if cls is LlamaIndexLLM else "max_tokens"
    assert getattr(a, field) == getattr(b, field) == 7


BAD_OPTIONS = [
    ({"max_tokens": 0}, "max_new_tokens must be a positive int, got 0"),
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"seed": -5}, "seed must be an int >= 0 or None, got -5"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_OPTIONS, ids=[m for _, m in BAD_OPTIONS])
def test_the_same_bad_option_raises_the_same_error_at_construction(sm, fields, message):
    errors = []
    for cls in ADAPTERS:
        with pytest.raises(OptionsError, match=re.escape(message)) as caught:
            cls(runtime=sm, **fields)
        errors.append((type(caught.value), str(caught.value)))
    assert len(set(errors)) == 1, errors
