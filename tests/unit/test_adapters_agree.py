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
    ({"seed": -5}, "seed must be an int >= 0 (below 2**64) or None, got -5"),
    ({"seed": 2**64}, "seed must be an int >= 0 (below 2**64) or None"),
    ({"truncate": "right"}, "truncate must be None or one of ['left', 'drop_oldest_messages']"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_OPTIONS, ids=[m for _, m in BAD_OPTIONS])
def test_the_same_bad_option_raises_the_same_error_at_construction(sm, fields, message):
    errors = []
    for cls in ADAPTERS:
        with pytest.raises(OptionsError, match=re.escape(message)) as caught:
            cls(runtime=sm, **fields)
        errors.append((type(caught.value), str(caught.value)))
    assert len(set(errors)) == 1, errors


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _requests(sm, kwargs):
    """The engine request each adapter makes for a call with ``kwargs`` (prompt aside)."""
    from langchain_core.messages import HumanMessage
    from llama_index.core.llms import ChatMessage

    chat = ChatSteer(runtime=sm, stop=["END"])
    lc = chat._request(chat._prompt_of(chat._convert_input([HumanMessage("hi")])), None, kwargs)
    li = LlamaIndexLLM(runtime=sm, stop=["END"])._request(
        dict(kwargs), messages=[ChatMessage(role="user", content="hi")]
    )
    return [
        (
            r.steering,
            r.options,
            r.constraint,
            r.tools,
            r.tool_choice,
            r.parallel_tool_calls,
            r.truncate,
        )
        for r in (lc, li)
    ]


CALLS = [
    {},
    {"max_tokens": 9, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["###"]},
    {"max_new_tokens": 9, "stop": None},  # the alias; stop=None keeps the model's stop
    {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": True},
    {"response_format": {"type": "json_object"}},
    {"constraint": {"type": "object"}, "steering_coeff": 0.5},
    {"truncate": "drop_oldest_messages"},
]


@pytest.mark.parametrize("kwargs", CALLS)
def test_the_same_call_options_make_the_same_request_in_both_frameworks(sm, kwargs):
    """One ``CallOptions`` builds both adapters' requests: the same vocabulary, aliases,
    defaults and steering resolve, so a call means the same wherever it is made."""
    from conftest import random_vector

    vec, extra = random_vector(sm, [1], 1.0), random_vector(sm, [2], 1.0, seed=2)
    lc, li = _requests(sm, {"steering": vec, "extra_steering": extra, **kwargs})
    assert lc == li
    assert lc[1].stop == (tuple(kwargs["stop"]) if kwargs.get("stop") else ("END",))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_tokenz": 3}, TypeError, "unknown call options ['max_tokenz']; accepted: "),
        ({"max_tokens": 3, "max_new_tokens": 4}, OptionsError, "and its alias max_tokens=3"),
        ({"max_tokens": 0}, OptionsError, "max_new_tokens must be a positive int, got 0"),
        ({"tool_choice": "get_weather"}, ActsteerError, "not a bound tool"),
    ],
)
def test_the_same_bad_call_option_raises_the_same_error_in_both(sm, kwargs, error, message):
    for make in (
        lambda: _requests(sm, kwargs),
        lambda: LlamaIndexLLM(runtime=sm)._request(dict(kwargs), prompt="hi"),
    ):
        with pytest.raises(error, match=re.escape(message)):
            make()


BAD_MODELS = [
    ({"model": "nobody/nothing-here"}, "HF_HUB_OFFLINE is set and it is not in the Hugging Face"),
    ({"model": "./no/such/dir"}, "cannot load model './no/such/dir': no such directory"),
    ({"model": "bad id!!"}, "not a local directory, nor a Hugging Face id"),
    ({"model_kwargs": {"dtype": "float99"}}, "model_kwargs dtype 'float99' is not a torch dtype"),
    ({"model_kwargs": {"device_map": "nonsense"}}, "device_map 'nonsense' is neither a device"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_MODELS, ids=[m for _, m in BAD_MODELS])
def test_a_model_that_cannot_load_is_refused_at_construction(monkeypatch, fields, message):
    """Before any weights: every adapter, the same ``ModelLoadError`` (an ``OSError`` too, as
    transformers' own loading errors are)."""
    from huggingface_hub import constants

    from actsteer import ModelLoadError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for cls in ADAPTERS:
        with pytest.raises(ModelLoadError, match=re.escape(message)) as caught:
            cls(**fields)
        assert isinstance(caught.value, OSError)
    ChatSteer(model="nobody/nothing-here", base_url="http://localhost:1/v1")  # a server's name


def test_a_model_that_fails_while_loading_says_which(tmp_path):
    from actsteer import ModelLoadError, SteeredModel

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=f"cannot load model '{re.escape(str(tmp_path))}'"):
        SteeredModel.from_pretrained(str(tmp_path))


def test_max_tokens_past_the_loaded_models_window_is_refused_at_construction(sm):
    """With the model at hand (``runtime=``) its context window is known: a ``max_tokens`` no
    prompt could fit beside is the same ``ContextWindowError`` in every adapter, at once."""
    from actsteer import ContextWindowError

    window = sm.engine.context_window
    assert window == 2048  # the tiny test model's max_position_embeddings
    errors = []
    for cls in ADAPTERS:
        with pytest.raises(ContextWindowError, match="leaves no room for a prompt") as caught:
            cls(runtime=sm, max_tokens=10**7)
        errors.append(str(caught.value))
        cls(runtime=sm, max_tokens=window - 1)
    assert len(set(errors)) == 1, errors
