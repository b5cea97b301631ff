"""Distillation on a tiny random model: it learns, stays deterministic, leaves the model alone,
records a training card, honours cancellation, and refuses bad input without caching anything."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from conftest import MORE_CONFIGS, TINY_CONFIGS, build_tiny

from actsteer import (
    ContextWindowError,
    DistillationError,
    GenerationError,
    SteeringSpecError,
    SteeringVector,
    presets,
)
from actsteer.apply import hooks
from actsteer.core.distill_config import config
from actsteer.data import neutral_inputs
from actsteer.evaluate import fidelity
from actsteer.sources.prepared import cache_path
from actsteer.train import extract as ex
from actsteer.train.distill import fidelity as F
from actsteer.train.distill import loop as D
from actsteer.train.distill import teacher as T
from actsteer.train.prepare import prepare

PROMPT = "Always answer like a pirate."
INPUTS = neutral_inputs("train")[:24]
FAST = dict(steps=30, batch_size=4, max_new_tokens=12, lr=0.05, progress=False)
FAST_CONFIG = {k: v for k, v in FAST.items() if k != "progress"}


@pytest.fixture(scope="module")
def sm():
    return build_tiny("llama", seed=3)


@pytest.fixture(scope="module")
def distilled(sm):
    before = {k: v.clone() for k, v in sm.model.state_dict().items()}
    vec = ex.distill(sm, PROMPT, INPUTS, **FAST)
    return vec, before


def test_distilling_lowers_the_held_out_kl(sm, distilled):
    vec, _ = distilled
    card = vec.meta.extra["training"]
    assert card["test_kl"] < card["test_kl_none"], card
    assert card["test_fidelity"] > 0.02 and card["dev_fidelity"] > 0.02, card
    assert card["best_step"] > 0
    # evaluate.fidelity is the same measure, here on inputs never seen in training
    f = fidelity(sm, PROMPT, vec, neutral_inputs("heldout")[:6], max_new_tokens=12)
    assert f.kl_vector < f.kl_none, f


def test_vector_trains_every_layer_but_0_and_carries_a_training_card(sm, distilled):
    vec, _ = distilled
    assert vec.layers == tuple(range(1, sm.num_layers))
    assert vec.meta.method == "distill" and vec.meta.model == sm.fingerprint
    card = vec.meta.extra["training"]
    for key in (
        "inputs_sha256",
        "steps",
        "steps_run",
        "history",
        "dev_fidelity",
        "test_fidelity",
        "positions",
        "coeff",
        "time_s",
    ):
        assert key in card, key
    assert card["positions"] == "all" and card["steps"] == 30
    assert card["train_inputs"] + card["dev_inputs"] + card["test_inputs"] == len(INPUTS)
    assert card["history"][0]["step"] == 0
    json.dumps(card)  # it must fit a safetensors header
    assert vec.meta.source["system_prompt"] == PROMPT and vec.meta.recommended_coeff == 1.0


def test_training_leaves_the_weights_untouched(sm, distilled):
    _, before = distilled
    after = sm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in sm.model.parameters())


def test_same_seed_same_vector(sm):
    kw = dict(FAST, steps=6, max_new_tokens=6)
    a = ex.distill(sm, PROMPT, INPUTS[:10], **kw)
    b = ex.distill(sm, PROMPT, INPUTS[:10], **kw)
    assert all(torch.equal(a.directions[x], b.directions[x]) for x in a.layers)
    c = ex.distill(sm, PROMPT, INPUTS[:10], **dict(kw, seed=1))
    assert any(not torch.equal(a.directions[x], c.directions[x]) for x in a.layers)


def test_template_form_and_generated_positions(sm, tmp_path):
    vec = ex.distill(
        sm, "Answer like a pirate: {input}", INPUTS[:10], positions="generated", **FAST
    )
    card = vec.meta.extra["training"]
    assert vec.meta.source["template"] is True and card["positions"] == "generated"
    # a distilled vector is applied where it was trained, also after a round trip to disk
    vec.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(tmp_path / "v.safetensors")
    assert [s.positions for s in sm.resolve(loaded)] == ["generated"]
    assert [s.positions for s in sm.resolve(f"file:{tmp_path / 'v.safetensors'}")] == ["generated"]


def test_teacher_replies_are_the_prompted_models_greedy_replies(sm):
    examples = T.teacher_examples(sm, PROMPT, INPUTS[:3], max_new_tokens=8, top_k=5)
    chats, _ = T.chats(PROMPT, INPUTS[:3], template=False)
    for e, gen in zip(examples, sm.generate_batch_detailed(chats, None, max_new_tokens=8)):
        assert e.reply == list(gen.token_ids)
        assert e.top_ids.shape == (len(e.reply), 5) and bool((e.tail_logp <= 0).all())
        # the greedy token is the teacher's most likely one
        assert e.top_ids[:, 0].tolist() == e.reply


def test_teacher_replies_are_the_same_with_the_shared_prompt_start_run_once(sm):
    shared = T.teacher_examples(sm, PROMPT, INPUTS[:6], max_new_tokens=8, top_k=5)
    whole = T.teacher_examples(
        sm, PROMPT, INPUTS[:6], max_new_tokens=8, top_k=5, share_prefix=False
    )
    assert T.shared_prefix([e.teacher for e in whole]) > len(PROMPT)
    for a, b in zip(shared, whole):
        assert a.reply == b.reply and a.teacher == b.teacher
        torch.testing.assert_close(a.top_logp, b.top_logp, atol=1e-4, rtol=0)


ALL_KINDS = sorted({**TINY_CONFIGS, **MORE_CONFIGS})


def packed_matches_padded(sm, prompts, replies, *, must_pack: bool) -> None:
    """Packed rows give the padded batch's reply log-probs and vector gradients, unsteered and
    steered at each kind of position (``must_pack``: packing may not step aside)."""
    vecs = {x: (torch.randn(sm.hidden_size) * 0.5).requires_grad_(True) for x in (1, 2)}
    for positions in (None, "all", "prompt", "generated"):
        row = D.vector_row(vecs, positions) if positions else None
        packed = T.packed_logprobs(sm, prompts, replies, row)
        if must_pack:
            assert packed is not None
        if packed is None:
            continue
        padded = T.reply_logprobs(sm, prompts, replies, row, pack=False)
        assert packed.shape == padded.shape
        for i, r in enumerate(replies):
            torch.testing.assert_close(packed[i, : len(r)], padded[i, : len(r)], atol=2e-4, rtol=0)
        if row is None:
            continue
        pick = [(i, j, t) for i, r in enumerate(replies) for j, t in enumerate(r)]
        grads = [
            torch.autograd.grad(sum(lp[i, j, t] for i, j, t in pick), list(vecs.values()))
            for lp in (packed, padded)
        ]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_packed_rows_give_the_padded_numbers_and_gradients(kind):
    """Rows packed behind their shared prefix (one forward, no padding) give the same reply
    log-probs and vector gradients as the padded batch, steered at each kind of position."""
    sm = build_tiny(kind, seed=1)
    torch.manual_seed(0)
    chats, _ = T.chats(PROMPT, INPUTS[:5], template=False)  # the system turn is shared
    prompts = [sm.encode(c) for c in chats]
    replies = [torch.randint(3, 259, (n,)).tolist() for n in (7, 3, 9, 1, 5)]
    assert T.shared_prefix(prompts) > len(PROMPT)
    # packing must apply to the embedded model's family
    packed_matches_padded(sm, prompts, replies, must_pack=kind == "llama")


def test_rows_with_and_without_the_prompt_pack_each_start_once():
    """Stack-safe training mixes rows with the system prompt and rows without it: each kind's
    start runs once (two groups behind the template's first tokens), with the padded numbers
    and gradients."""
    sm = build_tiny("llama", seed=1)
    torch.manual_seed(0)
    with_prompt, without = T.chats(PROMPT, INPUTS[:5], template=False)
    chats = [with_prompt[0], without[1], with_prompt[2], without[3], with_prompt[4]]
    prompts = [sm.encode(c) for c in chats]
    replies = [torch.randint(3, 259, (n,)).tolist() for n in (7, 3, 9, 1, 5)]
    shared = T.shared_prefix(prompts)
    groups = T.prefix_groups(prompts, shared)
    assert [rows for _, rows in groups] == [[0, 2, 4], [1, 3]]
    assert groups[0][0] > shared + len(PROMPT)  # the system prompt, once for its three rows
    packed_matches_padded(sm, prompts, replies, must_pack=True)


def test_packing_steps_aside_where_it_cannot_apply(sm):
    _, chats = T.chats(PROMPT, INPUTS[:3], template=False)
    prompts, replies = [sm.encode(c) for c in chats], [[5, 6], [7], [8, 9, 10]]
    actadd = {("actadd", "add"): ({1: torch.ones(2, sm.hidden_size)}, 1.0)}
    assert T.packed_logprobs(sm, prompts, replies, actadd) is None  # relative to a row's start
    lp = T.reply_logprobs(sm, prompts, replies, actadd)  # the padded form serves it
    assert lp.shape[:2] == (3, 3) and bool(torch.isfinite(lp).all())
    long = [list(range(3, 259)) * 9]  # over MAX_PACKED_TOKENS
    assert T.packed_logprobs(sm, long, [[5]]) is None


def test_packing_and_prefix_sharing_need_attention_only_layers():
    """A recurrent or state-space layer reads a gap in the mask and packed rows differently:
    such models keep the padded forms."""
    sm = build_tiny("llama", seed=2)
    assert T._attention_only(sm.model)
    chats, _ = T.chats(PROMPT, INPUTS[:2], template=False)
    prompts = [sm.encode(c) for c in chats]
    sm.model.config.layer_types = [
        "full_attention",
        "linear_attention",
        "full_attention",
        "full_attention",
    ]
    assert not T._attention_only(sm.model)
    assert T.packed_logprobs(sm, prompts, [[5], [6]]) is None


def test_a_caller_position_mask_of_the_wrong_shape_is_refused(sm):
    row = D.vector_row({1: torch.ones(sm.hidden_size)}, "prompt")
    plan = sm.handle.plan([(row, "t")])
    state = hooks.CallState(plan, position_masks={"prompt": torch.ones(1, 3, dtype=torch.bool)})
    ids = torch.tensor([[5, 6, 7, 8]])
    with hooks.activate(state), pytest.raises(GenerationError, match="position mask"):
        sm.model(input_ids=ids)


def test_topk_kl_is_exact_when_k_covers_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(5, 11, generator=g), -1)
    q = torch.log_softmax(torch.randn(5, 11, generator=g), -1)
    full = (p.exp() * (p - q)).sum(-1)
    top, ids = p.topk(11, dim=-1)
    assert torch.allclose(F.topk_kl(q, ids, top, T.log1mexp(top.logsumexp(-1))), full, atol=1e-4)
    top3, ids3 = p.topk(3, dim=-1)
    approx = F.topk_kl(q, ids3, top3, T.log1mexp(top3.logsumexp(-1)))
    assert bool((approx <= full + 1e-5).all())  # a coarser partition never overstates the KL


def test_stack_safe_training_keeps_the_vector_harmless_on_top_of_its_prompt(sm):
    """Rows trained with the prompt sent too teach the vector to leave the prompted model
    alone: KL(prompt || prompt + vector) on held-out inputs falls against plain distillation,
    while the KL to the prompt without it stays where plain distillation puts it."""
    held_out = neutral_inputs("heldout")[:12]
    examples = T.teacher_examples(sm, PROMPT, held_out, max_new_tokens=12)
    on_top = D.stacked(examples)

    def kls(vec):
        row = D.vector_row(vec.directions, "all")
        return F.batched_kl(sm, examples, row, 8), F.batched_kl(sm, on_top, row, 8)

    plain, plain_on_top = kls(ex.distill(sm, PROMPT, INPUTS, stack=0.0, **FAST))
    safe, safe_on_top = kls(ex.distill(sm, PROMPT, INPUTS, stack=0.25, **FAST))
    none = F.batched_kl(sm, examples, None, 8)
    assert plain < none and safe < none  # both still reproduce the prompt
    assert safe_on_top < 0.6 * plain_on_top, (safe_on_top, plain_on_top)
    assert safe < plain * 1.1, (safe, plain)


def test_the_coefficient_reproduces_the_prompt_without_stacking_worse_than_training():
    """The dial picks the best reproduction of the prompt alone among the coefficients that add
    no more on top of the prompt than the trained vector (1.0) does; the old rule (the training
    mixture) is still there by name. The first dial is the French IFEval vector's on dev."""
    french = {0.75: (0.087, 0.042), 1.0: (0.080, 0.069), 1.25: (0.102, 0.103)}
    assert D.choose_coeff(french, config()) == 1.0
    assert D.choose_coeff(french, config(select="mixture")) == 0.75
    flat = {0.75: (0.20, 0.05), 1.0: (0.15, 0.06), 1.25: (0.10, 0.06)}  # past 1 costs nothing
    assert D.choose_coeff(flat, config()) == 1.25
    steep = {1.0: (0.10, 0.05), 1.5: (0.08, 0.09), 2.0: (0.07, 0.20)}  # none as safe as 1.0
    assert D.choose_coeff(steep, config(coeffs=(1.5, 2.0))) == 1.5
    assert D.choose_coeff(steep, config(coeffs=(1.5, 2.0), stack=0.0)) == 2.0  # plain only


def test_the_training_card_records_both_kls_at_every_coefficient(distilled):
    card = distilled[0].meta.extra["training"]
    plain, on_top = card["coeff_dev_kl"], card["coeff_dev_stack_kl"]
    assert set(plain) == set(on_top) == {"0.75", "1", "1.25"}
    dial = {float(c): (plain[c], on_top[c]) for c in plain}
    assert card["coeff"] == D.choose_coeff(dial, config(**FAST_CONFIG))
    assert card["dev_stack_kl"] == on_top[f"{card['coeff']:g}"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"system_prompt": "  "}, "non-empty system prompt"),
        ({"template": True}, "must contain \\{input\\}"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"steps": -3}, "steps must be a positive int"),
        ({"lr": float("nan")}, "lr must be finite"),
        ({"positions": "actadd"}, "positions"),
        ({"inputs": ["only one", "two"]}, "at least 2 training"),
        ({"inputs": ["", "b", "c", "d", "e"]}, "non-empty strings"),
        ({"coeffs": ()}, "coeffs"),
        ({"stack": 1.0}, "stack must be in"),
        ({"stack": -0.1}, "stack must be in"),
        ({"select": "best"}, "select must be"),
    ],
)
def test_bad_input_gets_a_clear_error_before_any_work(sm, kwargs, match):
    args = {"system_prompt": PROMPT, "inputs": INPUTS[:8], **FAST}
    args.update(kwargs)
    with pytest.raises(SteeringSpecError, match=match):
        ex.distill(sm, **args)


def test_cancel_stops_training_and_the_model_keeps_serving(sm):
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    try:
        with pytest.raises(DistillationError, match="cancelled"):
            ex.distill(sm, PROMPT, INPUTS[:10], **dict(FAST, steps=100_000), cancel=cancel)
    finally:
        timer.cancel()
    assert sm.generate("hello", max_new_tokens=3) == sm.generate("hello", max_new_tokens=3)


def test_a_nan_loss_fails_and_nothing_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTEER_CACHE", str(tmp_path))
    tiny = build_tiny("qwen2", seed=2)
    real_kl = D.mean_kl
    monkeypatch.setattr(D, "mean_kl", lambda *a, **k: real_kl(*a, **k) * float("nan"))
    preset = presets.get("french")
    with pytest.raises(DistillationError, match="loss became nan"):
        prepare(tiny, preset, progress=False)
    assert not cache_path(tiny.fingerprint, preset).exists()
    assert not list(tmp_path.rglob("*.safetensors"))


def test_the_shipped_inputs_keep_training_and_evaluation_apart():
    """Vectors are built from "train"; the distill test set ("heldout") opens the benchmark's
    "eval" set; nothing in "eval" is a training message, or repeated."""
    train, heldout, evaluation = (neutral_inputs(s) for s in ("train", "heldout", "eval"))
    assert (len(train), len(heldout), len(evaluation)) == (200, 48, 200)
    assert evaluation[:48] == heldout
    lowered = [x.lower() for x in train + evaluation]
    assert len(set(lowered)) == len(lowered)
    assert neutral_inputs("all") == train + evaluation
    with pytest.raises(ValueError, match="split"):
        neutral_inputs("test")


def test_a_prompt_over_the_context_window_is_refused_before_any_work(sm, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("ran before the prompt was checked against the window")

    monkeypatch.setattr(T, "teacher_examples", no_work)
    monkeypatch.setattr(sm, "hidden_states_of_ids", no_work)
    window = sm.engine.context_window
    long_prompt = "Follow every rule. " + "Never use commas. " * (window // 2)
    with pytest.raises(ContextWindowError, match=f"context window of {window} tokens"):
        ex.distill(sm, long_prompt, INPUTS, **FAST)
    with pytest.raises(ContextWindowError, match="prompt_template: the prompt"):
        ex.prompt_template(sm, long_prompt, INPUTS)
    # the reply counts too: a prompt that fits alone but not with the teacher's reply
    fits = "Be brief. " * ((window - 400) // 10)
    n = max(len(sm.encode(c)) for c in T.chats(fits, INPUTS, False)[0])
    assert n < window
    with pytest.raises(ContextWindowError, match="teacher replies with up to"):
        ex.distill(sm, fits, INPUTS, **{**FAST, "max_new_tokens": window - n + 1})
