"""Presets: data files, the on-disk cache (hit, miss, corrupt entry) and expressions on a model."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from actsteer import Steering, SteeringSpecError, presets
from actsteer.sources import prepared
from actsteer.train import prepare as train_prepare

REQUIRED = {"json", "no-disclaimer", "concise", "french", "formal", "friendly", "love", "dogs"}


@pytest.fixture
def sm(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTEER_CACHE", str(tmp_path))
    return build_tiny("qwen2", seed=9)


def test_every_required_preset_ships_with_complete_data():
    by_name = {p.name: p for p in presets.list_presets()}
    assert set(by_name) >= REQUIRED
    for p in by_name.values():
        assert p.description and p.check
        if p.method == "distill":
            assert p.system_prompt and p.layers is None  # every layer but 0
        else:
            assert 0.0 <= p.layers[0] <= p.layers[1] <= 1.0
        if p.method == "prompt_template":
            assert p.system_prompt
        elif p.method != "distill":
            assert len(p.pairs) >= 6


def test_distilled_presets_ship_current_vectors_for_the_embedded_model():
    """A preset edited without rebuilding its shipped vector would silently be distilled again
    on first use (``python -m actsteer.presets.build NAME`` rebuilds it)."""
    from actsteer import SteeringVector
    from actsteer.default_model import DEFAULT_MODEL_NAME

    distilled = [p for p in presets.list_presets() if p.method == "distill"]
    assert {p.name for p in distilled} >= {"json", "concise", "french", "friendly"}
    for p in distilled:
        path = prepared.shipped_path(p)
        assert path is not None, f"{p.name}: no shipped vector"
        assert path.stat().st_size < 200_000
        vec = SteeringVector.load(path)
        assert vec.meta.model is not None and vec.meta.model.name == DEFAULT_MODEL_NAME
        assert vec.meta.extra["preset_hash"] == p.content_hash, f"{p.name}: stale vector"
        assert vec.meta.method == "distill" and vec.layers == tuple(range(1, 30))
        card = vec.meta.extra["training"]
        assert card["positions"] == p.positions and card["test_fidelity"] > 0


def test_unknown_preset_suggests_a_name():
    with pytest.raises(SteeringSpecError, match="did you mean 'dogs'"):
        presets.get("dgos")


def test_layers_are_fractions_of_depth():
    p = presets.get("love")
    assert p.layer_indices(30) == [6]
    assert p.layer_indices(4) == [1]


def test_cache_miss_then_hit_then_corrupt_entry(sm, monkeypatch):
    calls = []
    real_extract = train_prepare.extract
    monkeypatch.setattr(
        train_prepare, "extract", lambda *a, **k: calls.append(1) or real_extract(*a, **k)
    )
    p = presets.get("formal")
    first = train_prepare.prepare(sm, p)
    assert len(calls) == 1 and prepared.cache_path(sm.fingerprint, p).is_file()
    second = train_prepare.prepare(sm, p)
    assert len(calls) == 1 and second == first
    prepared.cache_path(sm.fingerprint, p).write_bytes(b"garbage that is not a safetensors file")
    third = train_prepare.prepare(sm, p)
    assert len(calls) == 2 and third == first


def test_ready_vector_scales_to_the_default_strength(sm):
    p = presets.get("love")
    v = sm.preset("love")
    norms = sm.activation_norms()
    assert v.layers == tuple(p.layer_indices(sm.num_layers))
    for layer, d in v.directions.items():
        assert d.norm().item() == pytest.approx(p.coeff * norms[layer], rel=1e-4)


def test_expressions_resolve_to_presets_and_files(sm, tmp_path):
    (s,) = sm.resolve("love:2 - formal")
    assert [t.name for t in s.terms] == ["love", "formal"]
    assert [t.coeff for t in s.terms] == [2.0, -1.0]
    assert s.describe() == "love:2 - formal"
    love = sm.preset("love")
    love.save(tmp_path / "love.safetensors")
    (f,) = sm.resolve(f"file:{tmp_path / 'love.safetensors'}:2")
    assert torch.equal(f.terms[0].vector.directions[1], love.directions[1])
    out_expr = sm.generate("hello", "love:2", max_new_tokens=6)
    assert out_expr == sm.generate("hello", Steering(love, 2.0), max_new_tokens=6)
    (sel,) = sm.resolve("french@1-2:0.5")  # distilled: every layer but 0
    assert sel.terms[0].vector.layers == (1, 2)


def test_the_shipped_vector_builder_runs(capsys):
    """``python -m actsteer.presets.build`` imports and parses its arguments (it is run by
    hand, so nothing else would notice it broken)."""
    from actsteer.presets import build

    with pytest.raises(SystemExit) as exit_:
        build.main(["--help"])
    assert exit_.value.code == 0 and "distilled" in capsys.readouterr().out


def test_a_preset_may_name_a_shipped_input_set():
    """``"inputs": "personal_questions:train"`` stands for that list (the content hash sees the
    questions themselves); an unknown set is refused with the known ones."""
    from actsteer.data import personal_questions

    p = presets.get("no-disclaimer")
    assert p.inputs == tuple(personal_questions("train")) and len(p.inputs) == 110
    assert not set(p.inputs) & set(personal_questions("heldout"))  # evaluation stays apart
    with pytest.raises(SteeringSpecError, match="unknown input set 'nope'"):
        presets._parse("x.json", {**_raw("no-disclaimer"), "inputs": "nope"})


def _raw(name: str) -> dict:
    import json
    from importlib import resources

    return json.loads(resources.files("actsteer.presets").joinpath(f"{name}.json").read_text())
