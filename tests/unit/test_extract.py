"""Extraction on tiny random models: shapes, metadata, batching invariance, determinism, signs."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from actsteer import Steering, SteeringSpecError
from actsteer.train import extract as ex
from actsteer.train import template

PAIRS = [
    ("a happy sunny morning", "a sad rainy morning"),
    ("we won the game", "we lost the game"),
    ("bright", "dark and gloomy evening"),
    ("the cake tastes great", "the cake tastes awful"),
]


@pytest.fixture(scope="module")
def sm():
    return build_tiny("llama", seed=4)


def test_mean_diff_shapes_and_metadata(sm):
    v = ex.mean_diff(sm, PAIRS, [1, 3])
    assert v.layers == (1, 3) and v.hidden_size == sm.hidden_size
    m = v.meta
    assert m.method == "mean_diff" and m.model == sm.fingerprint
    assert set(m.layer_norms) == {1, 3} and all(n > 0 for n in m.layer_norms.values())
    assert m.source["pairs"][0] == list(PAIRS[0]) and len(m.source["sha256"]) == 16


@pytest.mark.parametrize("read", ["mean", "last"])
def test_batched_equals_one_by_one(sm, read):
    batched = ex.mean_diff(sm, PAIRS, [0, 2], read=read, batch_size=8)
    single = ex.mean_diff(sm, PAIRS, [0, 2], read=read, batch_size=1)
    for layer in (0, 2):
        assert torch.allclose(batched.directions[layer], single.directions[layer], atol=1e-4)


def test_extraction_is_deterministic(sm):
    a, b = ex.pca(sm, PAIRS, [2]), ex.pca(sm, PAIRS, [2])
    assert torch.equal(a.directions[2], b.directions[2])


def test_mean_diff_is_the_mean_of_pair_differences(sm):
    states = sm.hidden_states([p for p, _ in PAIRS] + [n for _, n in PAIRS], [1])[1]
    manual = torch.stack(
        [states[i][-1] - states[len(PAIRS) + i][-1] for i in range(len(PAIRS))]
    ).mean(0)
    assert torch.allclose(
        ex.mean_diff(sm, PAIRS, [1], read="last").directions[1], manual, atol=1e-5
    )


def test_pca_sign_points_to_the_positive_side(sm):
    diffs = ex.pair_differences(sm, PAIRS, [2], read="last")[2]
    v = ex.pca(sm, PAIRS, [2]).directions[2]
    assert (diffs @ v > 0).float().mean() >= 0.5
    swapped = ex.pca(sm, [(n, p) for p, n in PAIRS], [2]).directions[2]
    assert torch.allclose(swapped, -v, atol=1e-4)
    centered = ex.pca(sm, PAIRS, [2], center=True).directions[2]
    assert (diffs @ centered > 0).float().mean() >= 0.5


def test_actadd_forms(sm):
    mean = ex.actadd(sm, "Love", "Hate", [1])
    assert mean.meta.method == "actadd" and mean.directions[1].ndim == 1
    pos = ex.actadd(sm, "Love", "Hate you", [1], form="positional")
    assert pos.is_positional and pos.directions[1].shape == (
        len(sm.encode("Hate you")),
        sm.hidden_size,
    )
    out = sm.generate("tell me", Steering(pos, positions="actadd"), max_new_tokens=4)
    assert isinstance(out, str)
    assert sm.generate("tell me", pos, max_new_tokens=4) == out  # its default: ActAdd positions
    with pytest.raises(SteeringSpecError, match="actadd"):
        Steering(pos)


def test_prompt_template_uses_the_deployment_chat_template(sm):
    inputs = ["what is rain?", "name a fruit", "how are you"]
    v = ex.prompt_template(sm, "Answer in French.", inputs, [1, 2])
    assert v.meta.method == "prompt_template" and v.meta.recommended_coeff == 1.0
    assert v.meta.source["inputs"] == 3 and v.meta.source["prompt_tokens_saved"] > 0
    # the "without" side is exactly what a call without the system prompt sends
    with_ids = sm.encode(
        [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": inputs[0]}]
    )
    without_ids = sm.encode([{"role": "user", "content": inputs[0]}])
    k = template._common_suffix(with_ids, without_ids)
    h = sm.hidden_states_of_ids([with_ids, without_ids], [1])[1]
    one = ex.prompt_template(sm, "Answer in French.", inputs[:1], [1]).directions[1]
    assert torch.allclose(one, (h[0][-k:] - h[1][-k:]).mean(0), atol=1e-5)
    templated = ex.prompt_template(sm, "Say it in French: {input}", inputs, [1])
    assert templated.meta.source["template"] is True


def test_bad_extraction_input(sm):
    with pytest.raises(SteeringSpecError, match="at least one"):
        ex.mean_diff(sm, [], [1])
    with pytest.raises(SteeringSpecError, match="read"):
        ex.mean_diff(sm, PAIRS, [1], read="middle")  # type: ignore[arg-type]
    with pytest.raises(SteeringSpecError, match="non-empty"):
        ex.prompt_template(sm, "  ", ["x"], [1])
    with pytest.raises(SteeringSpecError, match="pair must be"):
        ex.mean_diff(sm, [("only one",)], [1])  # type: ignore[list-item]
