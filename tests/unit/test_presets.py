"""Presets: data files, the on-disk cache (hit, miss, corrupt entry) and expressions on a model."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from actsteer import Steering, SteeringSpecError, presets

REQUIRED = {"json", "no-disclaimer", "concise", "french", "formal", "friendly", "love", "dogs"}


@pytest.fixture
def sm(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTEER_CACHE", str(tmp_path))
    return build_tiny("qwen2", seed=9)


def test_every_required_preset_ships_with_complete_data():
    by_name = {p.name: p for p in presets.list()}
    assert set(by_name) >= REQUIRED
    for p in by_name.values():
        assert p.description and p.check and 0.0 <= p.layers[0] <= p.layers[1] <= 1.0
        if p.method == "prompt_template":
            assert p.system_prompt
        else:
            assert len(p.pairs) >= 6


def test_unknown_preset_suggests_a_name():
    with pytest.raises(SteeringSpecError, match="did you mean 'dogs'"):
        presets.get("dgos")


def test_layers_are_fractions_of_depth():
    p = presets.get("love")
    assert p.layer_indices(30) == [6]
    assert p.layer_indices(4) == [1]


def test_cache_miss_then_hit_then_corrupt_entry(sm, monkeypatch):
    calls = []
    real_extract = presets.extract
    monkeypatch.setattr(
        presets, "extract", lambda *a, **k: calls.append(1) or real_extract(*a, **k)
    )
    p = presets.get("formal")
    first = presets.load_or_extract(sm, p)
    assert len(calls) == 1 and presets.cache_path(sm, p).is_file()
    second = presets.load_or_extract(sm, p)
    assert len(calls) == 1 and second == first
    presets.cache_path(sm, p).write_bytes(b"garbage that is not a safetensors file")
    third = presets.load_or_extract(sm, p)
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
    (sel,) = sm.resolve("french@0-2:0.5")
    assert sel.terms[0].vector.layers == (0, 1, 2)
