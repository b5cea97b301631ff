"""The hook contract on tiny random models of several families: parity, positions, operators."""

from __future__ import annotations

import pytest
import torch
from conftest import MORE_CONFIGS, build_tiny, random_vector

from actsteer import GenerationError, Steering, SteeringSpecError, SteeringVector
from actsteer.apply.hooks import current_state

PROMPTS = ["hello world", "a much longer prompt about the sea", "x", "tell me more"]
GEN = {"max_new_tokens": 10}


def test_zero_vector_is_bit_identical(tiny):
    zero = SteeringVector({1: torch.zeros(tiny.hidden_size), 2: torch.zeros(tiny.hidden_size)})
    ids = torch.tensor([tiny.encode("hello world")])
    plain = tiny.model(ids).logits
    with tiny.steer(Steering(zero, 3.0)) as plan:
        assert plan is None  # zero costs zero: nothing is installed for the call
        steered = tiny.model(ids).logits
    assert torch.equal(plain, steered)
    assert tiny.generate("hello world", zero, **GEN) == tiny.generate("hello world", **GEN)


def test_nonzero_vector_changes_output(tiny):
    v = random_vector(tiny, [1, 2], 2.0)
    assert tiny.generate("hello world", Steering(v), **GEN) != tiny.generate("hello world", **GEN)


def test_batch_rows_match_single_calls(tiny):
    v = random_vector(tiny, [1, 2], 1.0)
    w = random_vector(tiny, [0, 3], 1.0, seed=7)
    per_row = [
        Steering(v),
        None,
        Steering(w, 0.5, positions="generated"),
        [Steering(v, -1.0), Steering(w, operator="ablate")],
    ]
    batch = tiny.generate_batch(PROMPTS, per_row, **GEN)
    singles = [tiny.generate(p, s, **GEN) for p, s in zip(PROMPTS, per_row)]
    assert batch == singles


def test_stream_equals_generate(tiny):
    v = random_vector(tiny, [1], 1.0)
    for steering in (None, Steering(v)):
        text = tiny.generate("tell me more", steering, max_new_tokens=16)
        pieces = list(tiny.stream("tell me more", steering, max_new_tokens=16))
        assert "".join(pieces) == text


def test_stop_strings_cut_identically_in_stream_and_generate(llama):
    full = llama.generate("hello world", max_new_tokens=20)
    stop = full[5:7]  # a string that certainly occurs in the completion
    cut = llama.generate("hello world", max_new_tokens=20, stop=[stop])
    assert cut == full[: full.find(stop)]
    assert "".join(llama.stream("hello world", max_new_tokens=20, stop=[stop])) == cut
    detail = llama.generate_detailed("hello world", max_new_tokens=20, stop=[stop])
    assert detail.finish_reason == "stop"


def test_a_stop_string_spanning_the_prompts_end_does_not_stop_the_reply():
    """Stop strings match the reply only (as vLLM's): one made of the prompt's last character
    and the reply's first cut the reply to one token."""
    sm = build_tiny("llama", seed=11)
    chat = [{"role": "user", "content": "hello"}]
    full = sm.generate(chat, max_new_tokens=12)
    assert sm.render(chat).endswith("\n")
    stop = ["\n" + full[0]]
    assert stop[0] not in full
    detail = sm.generate_detailed(chat, max_new_tokens=12, stop=stop)
    assert (detail.text, detail.finish_reason) == (full, "length")
    assert "".join(sm.stream(chat, max_new_tokens=12, stop=stop)) == full


def test_generated_positions_leave_prompt_logits_unchanged(tiny):
    v = random_vector(tiny, [1, 2], 2.0)
    ids = torch.tensor([tiny.encode("hello world")])
    plain = tiny.model(ids, use_cache=True)
    with tiny.steer(Steering(v, positions="generated")):
        steered = tiny.model(ids, use_cache=True)
        assert torch.equal(plain.logits, steered.logits)
        # the next (generated) position is steered, with positions read through the KV cache
        nxt = plain.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)
        step = tiny.model(nxt, cache=steered.past_key_values, attention_mask=mask)
    ref = tiny.model(nxt, cache=plain.past_key_values, attention_mask=mask)
    assert not torch.allclose(step.logits, ref.logits)


def test_prompt_positions_steer_only_the_prompt(llama):
    v = random_vector(llama, [1, 2], 2.0)
    ids = torch.tensor([llama.encode("hello world")])
    plain = llama.model(ids)
    with llama.steer(Steering(v, positions="prompt")):
        steered = llama.model(ids)
    assert not torch.allclose(plain.logits, steered.logits)
    # generate steers the prompt the same way: its first token is the steered prompt's argmax
    g = llama.generate_detailed("hello world", Steering(v, positions="prompt"), **GEN)
    assert g.token_ids[0] == int(steered.logits[0, -1].argmax())


def test_ablate_removes_the_direction(tiny):
    d = random_vector(tiny, [1, 2], 1.0)
    states = tiny.hidden_states(
        ["hello world", "tell me more"], [1, 2], steering=Steering(d, operator="ablate")
    )
    for layer in (1, 2):
        unit = d.directions[layer] / d.directions[layer].norm()
        for h in states[layer]:
            proj = h @ unit
            assert proj.abs().max() < 1e-4 * h.norm(dim=-1).max()
    plain = tiny.hidden_states(["hello world"], [1])
    assert (plain[1][0] @ (d.directions[1] / d.directions[1].norm())).abs().max() > 1e-3


def test_ablating_collinear_directions_still_removes_every_direction(llama):
    """[a, 2a, b] in one call spans a and b: all of b goes too (a QR basis without pivoting
    dropped part of it)."""
    g = torch.Generator().manual_seed(0)
    a, b = (SteeringVector({1: torch.randn(llama.hidden_size, generator=g)}) for _ in range(2))
    ablate = [Steering(v, operator="ablate") for v in (a, a * 2, b)]
    h = llama.hidden_states(["hello world, how are you"], [1], steering=ablate)[1][0]
    for v in (a, b):
        unit = v.directions[1] / v.directions[1].norm()
        assert float((h @ unit).abs().max()) < 1e-4 * float(h.norm(dim=-1).max())


def test_norm_preserving_add_keeps_token_norms(llama):
    v = random_vector(llama, [2], 1.0)
    plain = llama.hidden_states(["hello world"], [2])[2][0]
    steered = llama.hidden_states(
        ["hello world"], [2], steering=Steering(v, operator="add_norm_preserving")
    )[2][0]
    assert torch.allclose(plain.norm(dim=-1), steered.norm(dim=-1), rtol=1e-4)
    assert not torch.allclose(plain, steered)


def test_actadd_positions_touch_only_the_front_of_the_prompt(llama):
    front = SteeringVector({1: torch.randn(3, llama.hidden_size) * 5})
    prompt = "a much longer prompt about the sea"
    plain = llama.hidden_states([prompt], [1])[1][0]
    steered = llama.hidden_states([prompt], [1], steering=Steering(front, positions="actadd"))[1][0]
    assert not torch.allclose(plain[:3], steered[:3])
    assert torch.equal(plain[3:], steered[3:])
    # left padding in a batch: each row's own first tokens are steered, not the pad positions
    per_row = [Steering(front, positions="actadd"), None]
    batch = llama.generate_batch([prompt, "x"], per_row, **GEN)
    assert batch == [llama.generate(prompt, per_row[0], **GEN), llama.generate("x", **GEN)]


def test_a_plain_vector_at_actadd_positions_steers_the_first_prompt_token(llama):
    v = random_vector(llama, [1], 2.0)
    one_row = SteeringVector({1: v.directions[1][None, :]})
    prompt = "a much longer prompt about the sea"
    plain = llama.hidden_states([prompt], [1])[1][0]
    steered = llama.hidden_states([prompt], [1], steering=Steering(v, positions="actadd"))[1][0]
    assert not torch.allclose(plain[:1], steered[:1]) and torch.equal(plain[1:], steered[1:])
    same = llama.hidden_states([prompt], [1], steering=Steering(one_row, positions="actadd"))
    assert torch.equal(steered, same[1][0])


def test_each_actadd_vector_steers_only_its_own_positions(llama):
    """A one-position vector beside a three-position one (another operator, same call): the
    short one steers token 0 only, however long the other is."""
    short = random_vector(llama, [1], 2.0, seed=7)
    front = SteeringVector({1: torch.randn(3, llama.hidden_size) * 3})
    kept = Steering(front, positions="actadd", operator="add_norm_preserving")
    prompt = "a much longer prompt about the sea"
    alone = llama.hidden_states([prompt], [1], steering=kept)[1][0]
    both = llama.hidden_states([prompt], [1], steering=[Steering(short, positions="actadd"), kept])
    assert not torch.allclose(both[1][0][0], alone[0])
    assert torch.equal(both[1][0][1:], alone[1:])


def test_raw_calls_under_steer_take_each_sequences_own_prompt_and_padding(llama):
    """Under ``steer()``, every forward from position 0 is a new prompt (a second call in the
    block is not cut at the first one's length), and a left-padded row's ActAdd positions start
    at its first real token."""
    v = random_vector(llama, [1, 2], 2.0)
    short = torch.tensor([llama.encode("hi")])
    long = torch.tensor([llama.encode("a much longer prompt than the first one")])
    with torch.no_grad():
        plain = llama.model(long).logits
        with llama.steer(Steering(v, positions="generated")):
            llama.model(short)
            assert torch.equal(llama.model(long).logits, plain)  # a prompt: not generated
        ids, mask = llama.handle.pad([long[0].tolist(), short[0].tolist()])
        actadd = Steering(v, positions="actadd")
        with llama.steer(actadd):
            batch = llama.model(input_ids=ids, attention_mask=mask).logits
        with llama.steer(actadd):
            alone = llama.model(short).logits
    assert not torch.allclose(alone, llama.model(short).logits)
    torch.testing.assert_close(batch[1, -short.shape[1] :], alone[0], atol=1e-4, rtol=0)


def test_relative_coefficients_scale_by_layer_norm(llama):
    v = random_vector(llama, [0, 3], 0.01)
    norms = llama.activation_norms()
    row, _ = llama.row_spec(Steering(v, 0.5, relative=True))
    deltas = row[("all", "add")][0]
    for layer in (0, 3):
        assert deltas[layer].norm().item() == pytest.approx(0.5 * norms[layer], rel=1e-5)


def test_vectors_combine_linearly_in_one_call(llama):
    a = random_vector(llama, [1], 0.5, seed=3)
    b = random_vector(llama, [1], 0.5, seed=4)
    combined = llama.generate("hello world", Steering([(a, 1.0), (b, -0.5)]), **GEN)
    assert combined == llama.generate("hello world", Steering(a - 0.5 * b), **GEN)
    assert combined == llama.generate("hello world", [Steering(a), Steering(b, -0.5)], **GEN)


def test_seeded_sampling_is_reproducible_and_row_independent(llama):
    kw = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 11}
    one = llama.generate("hello world", **kw)
    assert one == llama.generate("hello world", **kw)
    assert llama.generate_batch(["tell me more", "hello world"], **kw)[1] == one


def test_explain_lists_terms_layers_and_sizes(llama):
    v = random_vector(llama, [1, 2], 1.0)
    text = llama.explain(Steering(v, 2.0, positions="generated"))
    assert "positions=generated" in text and "layer   1" in text and "typical activation" in text
    plan = llama.plan([Steering(v), None])
    assert "rows=1" in plan.explain()


def test_close_removes_every_hook():
    sm = build_tiny("llama", seed=3)
    v = random_vector(sm, [1], 3.0)
    ids = torch.tensor([sm.encode("hello")])
    plain = sm.model(ids).logits
    sm.close()
    assert all(not layer._forward_hooks for layer in sm.layers)
    assert not sm.stack._forward_pre_hooks
    assert torch.equal(sm.model(ids).logits, plain)
    # steering a closed model would come out unsteered: refused, never silent
    with pytest.raises(GenerationError, match="closed"), sm.steer(Steering(v)):
        pass
    with pytest.raises(GenerationError, match="closed"):
        sm.generate("hello", Steering(v), max_new_tokens=2)
    assert sm.generate("hello", max_new_tokens=2) == sm.generate("hello", max_new_tokens=2)
    assert current_state() is None


@pytest.mark.parametrize("kind", sorted(MORE_CONFIGS))
def test_more_families_find_layers_and_steer(kind):
    sm = build_tiny(kind)
    v = random_vector(sm, [0, 1], 1.0)
    ids = torch.tensor([sm.encode("hello world")])
    plain = sm.model(ids).logits
    with sm.steer(Steering(v)):
        steered = sm.model(ids).logits
    with sm.steer(Steering(v, 0.0)):
        zero = sm.model(ids).logits
    assert torch.equal(plain, zero)
    assert not torch.allclose(plain, steered)


def test_an_offloaded_layer_is_steered_where_it_runs(tmp_path):
    """A layer offloaded by accelerate keeps its weights on ``meta``: its steering goes where
    the layer runs (the plan was moved to ``meta`` and generation failed)."""
    from transformers import AutoModelForCausalLM

    from actsteer import SteeredModel

    sm = build_tiny("llama", seed=3)
    sm.model.save_pretrained(tmp_path / "m")
    where = {f"model.layers.{i}": "cpu" for i in range(sm.num_layers)} | {"model.layers.1": "disk"}
    where |= {"model.embed_tokens": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    where["model.rotary_emb"] = "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", device_map=where, offload_folder=tmp_path / "off"
    )
    assert next(model.model.layers[1].parameters()).device.type == "meta"
    offloaded = SteeredModel.from_model(model, sm.tokenizer, name="tiny-llama")
    v = random_vector(sm, [1], 2.0)
    steered = offloaded.generate("hello", Steering(v), max_new_tokens=6)
    assert steered == sm.generate("hello", Steering(v), max_new_tokens=6)
    assert steered != sm.generate("hello", max_new_tokens=6)
    from actsteer.runtime.layers import placement

    assert placement(offloaded.layers[1]) == (torch.device("cpu"), torch.float32)


def test_resolve_applies_coeff_and_positions_overrides(llama):
    from actsteer.core.steering import steering_info

    v = random_vector(llama, [1], 1.0)
    (s,) = llama.resolve([Steering((v, 2.0), 3.0)], coeff=0.5, positions="generated")
    assert s.coeff == 1.5 and s.positions == "generated" and s.terms[0].coeff == 2.0
    info = steering_info([s])
    assert info["terms"][0]["coeff"] == 3.0 and info["terms"][0]["layers"] == [1]
    assert info["terms"][0]["digest"] == v.digest()
    assert "positions=generated" in info["expression"]


def test_shared_returns_one_model_per_id(monkeypatch):
    from actsteer import SteeredModel
    from actsteer.runtime import model as model_module

    built = []
    monkeypatch.setattr(model_module, "_SHARED", {})
    monkeypatch.setattr(
        SteeredModel,
        "from_pretrained",
        classmethod(lambda cls, mid, **kw: built.append(mid) or mid),
    )
    assert SteeredModel.shared("a/b") is SteeredModel.shared("a/b")
    SteeredModel.shared("a/b", dtype="bfloat16")
    assert built == ["a/b", "a/b"]


def test_a_mapping_of_steering_fields_steers_as_the_steering_it_names(llama, tmp_path):
    """``{"expression": ..., **Steering options}``: the form that also travels to a server."""
    v = random_vector(llama, [1, 2], 1.0)
    v.save(tmp_path / "v.safetensors")
    path = f"file:{tmp_path / 'v.safetensors'}"
    cases = [
        ({"operator": "ablate", "coeff": 0.5}, Steering(v, 0.5, operator="ablate")),
        (
            {"coeff": 2, "layers": [2], "positions": "generated"},
            Steering(v, 2, layers=[2], positions="generated"),
        ),
        (
            {"operator": "add_norm_preserving", "relative": True},
            Steering(v, operator="add_norm_preserving", relative=True),
        ),
    ]
    for options, want in cases:
        (got,) = llama.engine.resolve({"expression": path, **options})
        assert got.describe().split(" [")[1] == want.describe().split(" [")[1]
        assert llama.generate("hello world", {"expression": path, **options}, **GEN) == (
            llama.generate("hello world", want, **GEN)
        )
    with pytest.raises(SteeringSpecError, match="needs 'expression'"):
        llama.generate("hello world", {"operator": "ablate"}, **GEN)
