"""Sweep and calibrate end to end on a tiny random model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny, random_vector

from actsteer import SteeringSpecError, SteeringVector
from actsteer.evaluate.sweep import SweepPoint, calibrate, choose, plot_sweep, sweep


@pytest.fixture(scope="module")
def sm():
    return build_tiny("llama", seed=6)


def test_sweep_grid_and_plot(sm, tmp_path):
    v = random_vector(sm, [1, 2], 0.5)
    points = sweep(
        sm,
        v,
        check="concise",
        coeffs=(0.0, 1.0, 4.0),
        layer_sets=[[1], [1, 2]],
        # (on two prompts the strongest setting makes this random model write only unfinished
        # bytes: no text, so no perplexity)
        prompts=["hi there", "tell me", "good morning"],
        max_new_tokens=6,
        progress=False,
    )
    assert [(p.layers, p.coeff) for p in points] == [
        ((1,), 0.0),
        ((1,), 1.0),
        ((1,), 4.0),
        ((1, 2), 0.0),
        ((1, 2), 1.0),
        ((1, 2), 4.0),
    ]
    zero = points[0]
    assert zero.ppl_ratio == pytest.approx(1.0)  # coefficient 0 reproduces the unsteered replies
    assert all(0.0 <= p.success_rate <= 1.0 and math.isfinite(p.perplexity) for p in points)
    assert plot_sweep(points, tmp_path / "s.png").stat().st_size > 1000


def test_a_sweep_steers_a_vector_where_it_will_steer_when_used(sm, monkeypatch):
    """A vector distilled for generated positions is measured there, and a per-position
    (ActAdd) vector at its ActAdd positions (it could not be swept at all before)."""
    generated = random_vector(sm, [1, 2], 0.5).with_meta(
        extra={"training": {"positions": "generated"}}
    )
    front = SteeringVector({1: torch.randn(3, sm.hidden_size)})
    seen = []
    real = sm.generate_batch_detailed

    def spy(chats, steering=None, **kw):
        if steering is not None:
            seen.append(steering.positions)
        return real(chats, steering, **kw)

    monkeypatch.setattr(sm, "generate_batch_detailed", spy)
    for v in (generated, front):
        sweep(
            sm, v, check="concise", coeffs=(1.0,), prompts=["hi"], max_new_tokens=3, progress=False
        )
    assert seen == ["generated", "actadd"]


def test_choose_respects_the_quality_budget():
    pts = [
        SweepPoint(1.0, (1,), 0.5, 0.0, 2.0, 1.1),
        SweepPoint(4.0, (1,), 0.9, 0.0, 9.0, 3.0),
        SweepPoint(2.0, (1,), 0.7, 0.0, 2.4, 1.2),
    ]
    assert choose(pts).coeff == 2.0
    assert choose(pts, max_ppl_ratio=5.0).coeff == 4.0
    with pytest.raises(SteeringSpecError, match="quality budget"):
        choose(pts, max_ppl_ratio=1.0)


def test_calibrate_writes_a_card_that_generate_uses(sm, tmp_path):
    v = random_vector(sm, [1, 2], 0.5)
    vec, _ = calibrate(
        sm,
        v,
        check="concise",
        coeffs=(0.0, 2.0),
        layer_sets=[[2]],
        prompts=["hi there"],
        max_new_tokens=6,
        max_ppl_ratio=1e9,
        progress=False,
    )
    card = vec.meta.extra["steering_card"]
    assert card["layers"] == [2] and card["model"]["name"] == sm.fingerprint.name
    assert card["coeff"] in (0.0, 2.0) and vec.meta.recommended_coeff == card["coeff"]
    vec.save(tmp_path / "c.safetensors")
    from actsteer import Steering, SteeringVector

    loaded = SteeringVector.load(tmp_path / "c.safetensors")
    (s,) = sm.resolve(loaded)
    assert s.coeff == card["coeff"] and s.layers == (2,)
    assert sm.generate("hi", loaded, max_new_tokens=5) == sm.generate(
        "hi", Steering(loaded, card["coeff"], layers=[2]), max_new_tokens=5
    )
    (f,) = sm.resolve(f"file:{tmp_path / 'c.safetensors'}:2")
    assert f.coeff == 1.0 and f.terms[0].coeff == 2.0
    assert torch.allclose(f.terms[0].vector.directions[2], loaded.directions[2] * card["coeff"])
