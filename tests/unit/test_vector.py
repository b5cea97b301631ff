"""SteeringVector algebra, metadata, files, and the errors bad input gets."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny, random_vector
from hypothesis import given, settings
from hypothesis import strategies as st

from actsteer import (
    ActsteerError,
    CoefficientError,
    LayerError,
    ModelFingerprint,
    ModelMismatchError,
    NonFiniteError,
    OptionsError,
    SteeredModel,
    Steering,
    SteeringSpecError,
    SteeringVector,
    UnknownArchitectureError,
    VectorFileError,
    VectorMeta,
    VectorShapeError,
)

H = 8
FP = ModelFingerprint("org/Model-1B", "LlamaForCausalLM", H, 4)


def vec(layers=(1, 2), scale=1.0, meta=None) -> SteeringVector:
    return SteeringVector(
        {i: torch.arange(H, dtype=torch.float32) * scale + i for i in layers}, meta
    )


def test_algebra_is_per_layer_and_linear():
    a, b = vec((1, 2)), vec((2, 3), 2.0)
    s = 0.5 * a - b
    assert s.layers == (1, 2, 3)
    assert torch.allclose(s.directions[1], 0.5 * a.directions[1])
    assert torch.allclose(s.directions[2], 0.5 * a.directions[2] - b.directions[2])
    assert torch.allclose(s.directions[3], -b.directions[3])
    assert (a / 2) == (a * 0.5)
    assert -a == a * -1
    assert (a + a).directions[1].equal((2 * a).directions[1])
    assert (a + a).meta.method == "combination"


def test_normalized_and_select():
    n = vec((1, 2, 3)).normalized()
    assert all(math.isclose(v, 1.0, rel_tol=1e-6) for v in n.norms().values())
    assert n.select([3, 1]).layers == (1, 3)  # a vector's layers are kept in order
    assert n.select([3, 1]).directions[3].equal(n.directions[3])
    with pytest.raises(SteeringSpecError, match="no direction for layer"):
        n.select([7])


def test_vectors_are_immutable_copies():
    t = torch.ones(H)
    v = SteeringVector({0: t})
    t.add_(5)
    assert torch.equal(v.directions[0], torch.ones(H))
    with pytest.raises(TypeError):
        v.directions[1] = torch.ones(H)  # type: ignore[index]
    with pytest.raises(AttributeError):
        v.meta = VectorMeta()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("directions", "error", "match"),
    [
        ({}, VectorShapeError, "non-empty"),
        ({0: torch.ones(H), 1: torch.ones(H + 1)}, VectorShapeError, "hidden size"),
        ({0: torch.ones(2, 2, 2)}, VectorShapeError, "expected shape"),
        ({0: torch.tensor([1.0, float("nan")])}, NonFiniteError, "NaN"),
        ({0: torch.tensor([1.0, float("inf")])}, NonFiniteError, "infinity"),
        ({-1: torch.ones(H)}, SteeringSpecError, "non-negative"),
        ({"a": torch.ones(H)}, SteeringSpecError, "non-negative"),
        ({0: torch.ones(H, dtype=torch.bool)}, VectorShapeError, "float"),
    ],
)
def test_bad_directions_are_refused(directions, error, match):
    with pytest.raises(error, match=match):
        SteeringVector(directions)


def test_bad_scalars_are_refused():
    with pytest.raises(NonFiniteError):
        vec() * float("nan")
    with pytest.raises(NonFiniteError):
        vec() / 0
    with pytest.raises(NonFiniteError):
        Steering(vec(), float("inf"))
    with pytest.raises(SteeringSpecError, match="positions"):
        Steering(vec(), positions="middle")  # type: ignore[arg-type]
    with pytest.raises(SteeringSpecError, match="operator"):
        Steering(vec(), operator="multiply")  # type: ignore[arg-type]
    with pytest.raises(CoefficientError, match="ablation strength"):
        Steering(vec(), 5.0, operator="ablate")
    with pytest.raises(SteeringSpecError, match="actadd"):
        Steering(SteeringVector({0: torch.ones(3, H)}))


def test_combining_vectors_of_different_models_is_refused():
    other = ModelFingerprint("org/Other", "Qwen2ForCausalLM", H, 4)
    with pytest.raises(ModelMismatchError, match="different models"):
        vec(meta=VectorMeta(model=FP)) + vec(meta=VectorMeta(model=other))


def test_fingerprint_names_compare_by_last_component():
    local = ModelFingerprint("/models/model-1b", "LlamaForCausalLM", H, 4)
    assert FP.difference(local) is None
    assert "num_layers" in FP.difference(ModelFingerprint("org/Model-1B", "LlamaForCausalLM", H, 5))


def test_native_and_gguf_round_trips_are_exact(tmp_path):
    meta = VectorMeta(
        model=FP,
        method="mean_diff",
        layer_norms={1: 3.5, 2: 4.0},
        source={"pairs": 3},
        recommended_coeff=2.0,
    )
    v = SteeringVector({1: torch.randn(H), 2: torch.randn(H)}, meta)
    v.save(tmp_path / "v.safetensors")
    assert SteeringVector.load(tmp_path / "v.safetensors") == v
    v.to_gguf(tmp_path / "v.gguf")
    g = SteeringVector.from_gguf(tmp_path / "v.gguf")
    assert g.layers == v.layers
    assert all(torch.equal(g.directions[i], v.directions[i]) for i in v.layers)
    assert g.meta.extra["model_hint"] == "llama"  # as cvector-generator writes


def test_gguf_export_leaves_out_layer_zero_for_llama_cpp(tmp_path):
    v = vec((0, 1))
    with pytest.warns(UserWarning, match="layer 0 left out"):
        v.to_gguf(tmp_path / "v.gguf")
    assert SteeringVector.from_gguf(tmp_path / "v.gguf").layers == (1,)


def test_load_checks_the_model_fingerprint(tmp_path):
    v = vec(meta=VectorMeta(model=FP))
    v.save(tmp_path / "v.safetensors")
    other = ModelFingerprint("org/Other", "LlamaForCausalLM", H, 4)
    with pytest.raises(ModelMismatchError, match="force=True"):
        SteeringVector.load(tmp_path / "v.safetensors", model=other)
    assert SteeringVector.load(tmp_path / "v.safetensors", model=other, force=True) == v
    with pytest.raises(VectorShapeError, match="hidden size"):
        SteeringVector.load(
            tmp_path / "v.safetensors", model=ModelFingerprint("x", "y", H * 2, 4), force=True
        )


def test_missing_and_corrupt_files_raise_vector_file_error(tmp_path):
    with pytest.raises(VectorFileError):
        SteeringVector.load(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{oops}")
    with pytest.raises(VectorFileError):
        SteeringVector.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"layer_norms": {"1": -3.0}}, "layer 1's norm"),  # would flip relative steering
        ({"layer_norms": {"1": 0.0}}, "layer 1's norm"),
        ({"layer_norms": {"1": "inf"}}, "layer 1's norm"),
        ({"recommended_coeff": "nan"}, "recommended_coeff"),
    ],
)
def test_metadata_that_would_misdirect_steering_is_refused(tmp_path, meta, match):
    from actsteer.core.formats.native import write_native

    path = tmp_path / "v.safetensors"
    write_native(path, {1: torch.ones(8)}, meta)
    with pytest.raises(SteeringSpecError, match=match):
        SteeringVector.load(path)
    with pytest.raises(SteeringSpecError, match=match):
        VectorMeta(
            layer_norms={1: -1.0} if "layer_norms" in meta else {},
            recommended_coeff=(math.inf if "recommended_coeff" in meta else None),
        )


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_garbled_bytes_only_raise_actsteer_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("garbled") / "v"
    path.write_bytes(data)
    for loader in (SteeringVector.load, SteeringVector.from_gguf):
        with pytest.raises(ActsteerError):
            loader(path)


@pytest.fixture(scope="module")
def sm() -> SteeredModel:
    return build_tiny("qwen2", seed=2)


def test_model_checks_on_apply(sm):
    ok = random_vector(sm, [1], 1.0)
    with pytest.raises(VectorShapeError, match="hidden size"):
        sm.generate("hi", SteeringVector({1: torch.ones(sm.hidden_size + 1)}))
    with pytest.raises(LayerError, match="out of range"):
        sm.generate("hi", SteeringVector({9: torch.ones(sm.hidden_size)}))
    with pytest.raises(LayerError, match="no vector has a direction"):
        sm.generate("hi", Steering(ok, layers=[2]))
    foreign = ok.with_meta(model=ModelFingerprint("org/Other", "X", sm.hidden_size, 4))
    with pytest.raises(ModelMismatchError, match="made on 'org/Other'"):
        sm.generate("hi", foreign, max_new_tokens=2)
    # forced, the foreign vector steers exactly as the same directions made for this model
    forced = sm.generate("hi", Steering(foreign, 4.0, force=True), max_new_tokens=4)
    assert forced == sm.generate("hi", Steering(ok, 4.0), max_new_tokens=4)
    with pytest.raises(CoefficientError, match="too large"):
        sm.generate("hi", Steering(ok, 1e6))
    with pytest.raises(OptionsError, match="max_new_tokens"):
        sm.generate("hi", max_new_tokens=0)
    with pytest.raises(SteeringSpecError, match="2 steering specs for 3 prompts"):
        sm.generate_batch(["a", "b", "c"], [None, None])
    with pytest.raises(SteeringSpecError, match="cannot steer with a set"):
        sm.generate("hi", {1})  # type: ignore[arg-type]
    with pytest.raises(SteeringSpecError, match=r"unknown steering fields \['x'\]"):
        sm.generate("hi", {"x": 1})  # type: ignore[arg-type]


def test_failed_calls_leave_the_model_as_it_was(sm):
    ref = sm.generate("hello", max_new_tokens=6)
    with pytest.raises(CoefficientError):
        sm.generate("hello", Steering(random_vector(sm, [1], 1.0), 1e9))
    assert sm.generate("hello", max_new_tokens=6) == ref


def test_unknown_architecture_names_layers_path():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = None
            self.blocks_here = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    from conftest import tiny_tokenizer

    with pytest.raises(UnknownArchitectureError, match="layers_path"):
        SteeredModel.from_model(Odd(), tiny_tokenizer())
    with pytest.raises(UnknownArchitectureError, match=r"no non-empty nn\.ModuleList"):
        SteeredModel.from_model(Odd(), tiny_tokenizer(), layers_path="nothing.here")
