"""Both adapters refuse the same bad steering at construction, with the same ActsteerError, and
speak the same option vocabulary where their frameworks allow it."""

from __future__ import annotations

import pytest
from conftest import build_tiny

from actsteer import ActsteerError
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
