"""The parts of the vLLM backend that need no server: the plugin's spec parsing and its deltas
(the local engine's own), and the remote engine's client-side steering checks."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny, random_vector

from actsteer import CoefficientError, Steering, SteeringSpecError, SteeringVector
from actsteer.apply import combine
from actsteer.cli.bundle import write_bundle
from actsteer.remote import RemoteEngine, RemoteSteering, merged
from actsteer.vllm.served import ServedModel, compile_spec, parse_spec


@pytest.fixture(scope="module")
def sm():
    return build_tiny("llama", seed=5)


def test_spec_forms_and_their_errors():
    assert parse_spec("love:2 -formal") == [{"expression": "love:2 - formal"}]
    spec = json.dumps({"expression": "dogs", "coeff": 0.5, "positions": "generated"})
    assert parse_spec(spec) == [{"expression": "dogs", "coeff": 0.5, "positions": "generated"}]
    both = [{"expression": "dogs", "layers": [1, 2]}, {"expression": "x", "operator": "ablate"}]
    assert parse_spec(json.dumps(both)) == both
    bad = {
        "": "expression",
        3: "expression",
        "{oops": "not valid JSON",
        "[]": "a list of 1",
        '["dogs"]': "JSON object",
        '{"expression": 3}': "needs 'expression'",
        '{"expression": "x", "colour": 1}': "unknown steering fields",
        '{"expression": "dogs", "positions": "middle"}': "unknown positions",
        '{"expression": "dogs", "operator": "multiply"}': "unknown operator",
        '{"expression": "dogs", "layers": [-1]}': "non-negative ints",
        '{"expression": "dogs", "layers": "3"}': "non-negative ints",
        '{"expression": "dogs", "coeff": "2"}': "finite number",
        '{"expression": "dogs", "relative": 1}': "true or false",
    }
    for value, why in bad.items():
        with pytest.raises(SteeringSpecError, match=why):
            parse_spec(value)


def test_served_deltas_are_the_local_engines(sm, tmp_path):
    vec = random_vector(sm, [1, 2], 1.5)
    folder = tmp_path / "vectors"
    folder.mkdir()
    vec.save(folder / "mine.safetensors")
    bundle = write_bundle(sm, tmp_path / "b.json", vectors=folder, prepare=[], progress=False)
    served = ServedModel.from_bundle(bundle)
    assert served.fingerprint == sm.fingerprint
    spec = json.dumps({"expression": "file:mine:2", "positions": "generated"})
    got = compile_spec(served, spec)
    row, _ = combine.compile_row(
        (Steering(vec, 2.0, positions="generated"),), sm.fingerprint, sm.activation_norms()
    )
    (want,) = [d for (where, _), (d, _) in row.items() if where == "generated"]
    assert got.prompt == {}
    assert set(got.generated) == set(want)
    assert all(torch.equal(got.generated[k], want[k]) for k in want)
    assert got.plan is None  # plain additions: the runner's table
    (folder / "mine.safetensors").rename(folder / "gone.safetensors")  # read once, kept
    again = compile_spec(served, spec)
    assert all(torch.equal(again.generated[k], got.generated[k]) for k in want)
    (folder / "gone.safetensors").rename(folder / "mine.safetensors")
    for options in ({"positions": "actadd"}, {"operator": "ablate"}):
        spec = json.dumps({"expression": "file:mine", **options})
        ops = compile_spec(served, spec)
        local = (Steering(vec).with_options(**options),)
        want_row, _ = combine.compile_row(local, sm.fingerprint, sm.activation_norms())
        assert ops.prompt == ops.generated == {}
        assert {(op.positions, op.operator) for op in ops.plan.layers[1]} == want_row.keys()
        assert ops.layers == {1, 2}
    with pytest.raises(CoefficientError, match="ablation strength"):
        compile_spec(
            served, json.dumps({"expression": "file:mine", "operator": "ablate", "coeff": 3})
        )
    for bad, why in (("file:/etc/x", "name a vector"), ("file:../x", "name a vector")):
        with pytest.raises(SteeringSpecError, match=why):
            compile_spec(served, bad)
    with pytest.raises(SteeringSpecError, match="no such vector"):
        compile_spec(served, "file:other")


def test_remote_resolve_checks_on_the_client_and_sends_expressions():
    engine = RemoteEngine("http://127.0.0.1:9/v1", "m")  # nothing listens: nothing is sent
    (s,) = engine.resolve(["love:2", "-formal"], coeff=0.5)
    assert s == RemoteSteering("love:2 - formal", 0.5, None)
    assert json.loads(s.spec()) == {"expression": "love:2 - formal", "coeff": 0.5}
    assert engine.resolve(None) == ()
    with pytest.raises(SteeringSpecError, match="did you mean"):
        engine.resolve("jsno")
    both = merged([*engine.resolve("dogs", coeff=2.0), *engine.resolve("json")])
    assert both == "dogs:2 + json"
    apart = merged([*engine.resolve("dogs", positions="generated"), *engine.resolve("json")])
    assert json.loads(apart) == [
        {"expression": "dogs", "positions": "generated"},
        {"expression": "json"},
    ]
    (ablate,) = engine.resolve({"expression": "dogs", "operator": "ablate", "layers": [3, 4]})
    assert json.loads(ablate.spec()) == {
        "expression": "dogs",
        "layers": [3, 4],
        "operator": "ablate",
    }
    assert ablate.describe() == "dogs [layers=3-4, operator=ablate, strength=1]"
    with pytest.raises(SteeringSpecError, match="unknown operator"):
        engine.resolve({"expression": "dogs", "operator": "multiply"})
    with pytest.raises(CoefficientError, match="ablation strength"):  # before anything is sent
        engine.resolve({"expression": "dogs", "operator": "ablate"}, coeff=3.0)
    with pytest.raises(SteeringSpecError, match="not a SteeringVector"):
        engine.resolve(random_vector(build_tiny("llama", seed=5), [1]))


def test_remote_steerings_keep_their_order_options_and_local_descriptions(sm):
    """A list keeps its order (runs of expressions fold in place); ``force`` never gets lost in
    a merge; a remote steering prints as the local ``Steering`` it names."""
    engine = RemoteEngine("http://127.0.0.1:9/v1", "m")
    ablate = {"expression": "formal", "operator": "ablate"}
    got = engine.resolve([ablate, "dogs", "love:2", {"expression": "json"}, "concise"])
    assert [s.expression for s in got] == ["formal", "dogs + love:2", "json", "concise"]
    forced = merged([RemoteSteering("file:x", force=True), RemoteSteering("love")])
    assert json.loads(forced) == [{"expression": "file:x", "force": True}, {"expression": "love"}]
    with pytest.raises(SteeringSpecError, match="at most 16 steerings"):
        merged([RemoteSteering("love", operator="ablate")] * 17)
    for spec in (
        {"expression": "love", "operator": "ablate"},
        {"expression": "love", "operator": "ablate", "coeff": 0.5},
        {"expression": "love:2 - dogs", "coeff": 0.5},
        {"expression": "love@1-2", "positions": "generated", "operator": "add_norm_preserving"},
        {"expression": "love", "layers": [1, 2], "relative": True},
    ):
        (remote,) = engine.resolve(spec)
        (local,) = sm.engine.resolve(spec)
        assert remote.describe() == local.describe(), spec


def test_mapping_checks_catch_what_would_fail_later():
    from actsteer.core.wire import spec_options

    np = pytest.importorskip("numpy")
    assert spec_options({"expression": "x", "layers": [np.int64(3)]})[1] == {"layers": (3,)}
    bad = [
        ({"expression": "x", "coeff": 10**400}, SteeringSpecError, "finite number"),
        (
            {"expression": "x", 1: 2, "y": 3},
            SteeringSpecError,
            r"unknown steering fields \['y', 1\]",
        ),
        ({"expression": "x", "positions": ["all"]}, SteeringSpecError, "unknown positions"),
        (
            {"expression": "x", "operator": "ablate", "positions": "actadd"},
            SteeringSpecError,
            "not defined",
        ),
        ({"expression": "x", "operator": "ablate", "coeff": -1}, CoefficientError, "strength"),
    ]
    for spec, error, why in bad:
        with pytest.raises(error, match=why):
            spec_options(spec)


def test_positional_steering_salts_the_prefix_cache_with_the_prompt_length(
    steerer_parts, monkeypatch
):
    """vLLM caches blocks of generated tokens too: under a steering that treats prompt and
    generated tokens apart, a follow-up prompt containing an earlier reply must not reuse that
    reply's KV, so the salt carries the prompt length; a steering at all positions does not."""
    from actsteer.vllm import frontend

    _, served, _ = steerer_parts
    monkeypatch.setattr(frontend, "_served", lambda: served)
    frontend._checked.cache_clear()
    generated = json.dumps({"expression": "file:mine", "positions": "generated"})
    assert frontend.salt_for(generated, None, 10) != frontend.salt_for(generated, None, 11)
    assert frontend.salt_for("file:mine", None, 10) == frontend.salt_for("file:mine", None, 11)
    long_a, long_b = "a" * 100 + "1", "a" * 100 + "2"  # vLLM takes 128 characters in all
    salts = {frontend.salt_for(generated, u, 10**6) for u in (long_a, long_b, "mine")}
    assert len(salts) == 3 and all(len(x) <= 128 for x in salts)
    frontend._checked.cache_clear()


class _Layers(torch.nn.Module):
    """A stand-in for vLLM's model: ``model.layers`` over flattened tokens ``(tokens, hidden)``,
    whose layers pass the hidden states through (only the plugin's hooks change them)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(torch.nn.Identity() for _ in range(n))
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # device and dtype, as a real model's

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.model.layers:
            hidden = layer(hidden)
        return hidden


def _runner(requests: list[tuple[str | None, int, int]]):
    """vLLM's runner as the plugin reads it: (steering spec, prompt length, tokens computed)."""
    from types import SimpleNamespace

    states = {
        f"r{i}": SimpleNamespace(
            sampling_params=SimpleNamespace(extra_args={"actsteer": spec} if spec else None),
            num_prompt_tokens=prompt,
        )
        for i, (spec, prompt, _) in enumerate(requests)
    }
    batch = SimpleNamespace(
        num_reqs=len(requests),
        req_ids=list(states),
        num_computed_tokens_cpu=[done for _, _, done in requests],
    )
    return SimpleNamespace(input_batch=batch, requests=states)


@pytest.fixture
def steerer_parts(sm, tmp_path):
    from actsteer.vllm.runner import Steerer

    folder = tmp_path / "vectors"
    folder.mkdir()
    random_vector(sm, [1, 2], 1.5).save(folder / "mine.safetensors")
    bundle = write_bundle(sm, tmp_path / "b.json", vectors=folder, prepare=[], progress=False)
    served = ServedModel.from_bundle(bundle)
    return Steerer, served, compile_spec(served, "file:mine:2")


@pytest.mark.parametrize("always", [False, True], ids=["eager", "compiled"])
def test_the_runner_adds_each_tokens_delta_by_the_step_map(steerer_parts, always):
    """Request 0 (steered) has 2 prompt tokens left and 1 generated in this step, request 1
    (unsteered) 2 tokens: each flattened token gets its own request's prompt/generated delta.
    The next step, unsteered, leaves every token as it was in both modes."""
    Steerer, served, want = steerer_parts
    model = _Layers(served.num_layers)
    steerer = Steerer(model, served, max_tokens=16, always=always)
    steerer.prepare_step(_runner([("file:mine:2", 3, 1), (None, 4, 0)]), [3, 2])
    out = model(torch.zeros(5, served.hidden_size))
    delta = {layer: torch.zeros(served.hidden_size) for layer in range(served.num_layers)}
    expect = torch.zeros(5, served.hidden_size)
    for i, part in enumerate((want.prompt, want.prompt, want.generated)):
        expect[i] = sum(part.values(), delta[0])
    torch.testing.assert_close(out, expect)
    steerer.prepare_step(_runner([(None, 3, 3), (None, 4, 2)]), [1, 1])
    assert torch.equal(model(torch.ones(2, served.hidden_size)), torch.ones(2, served.hidden_size))
    assert steerer.rows.abs().sum() == 0  # the previous step's map is gone


def test_a_compiled_graph_reads_each_steps_map_without_recompiling(steerer_parts):
    """torch.compile traces the hooks once (dynamic token count): the graph must read the map
    and tables from their buffers at every call, not bake in the step it was traced on."""
    Steerer, served, want = steerer_parts
    model = _Layers(served.num_layers)
    steerer = Steerer(model, served, max_tokens=16, always=True)
    compiled = torch.compile(model, backend="aot_eager", dynamic=True, fullgraph=True)
    hidden = served.hidden_size
    assert torch.equal(compiled(torch.zeros(3, hidden)), torch.zeros(3, hidden))  # traced here
    total_generated = sum(want.generated.values())
    with torch.compiler.set_stance("fail_on_recompile"):
        steerer.prepare_step(_runner([(None, 2, 2), ("file:mine:2", 2, 2)]), [1, 1])
        out = compiled(torch.zeros(2, hidden))
        torch.testing.assert_close(out[0], torch.zeros(hidden))
        torch.testing.assert_close(out[1], total_generated)
        steerer.prepare_step(_runner([("file:mine:2", 2, 2), (None, 5, 1)]), [1, 4])
        out = compiled(torch.zeros(5, hidden))
        torch.testing.assert_close(out[0], total_generated)
        assert torch.equal(out[1:], torch.zeros(4, hidden))


class _PairLayers(torch.nn.Module):
    """vLLM's layer convention: each layer takes and returns ``(hidden, residual)``, the stream
    being their sum (``residual`` is None into the first layer); here the stream grows by
    ``tanh(stream @ w)`` per layer, and the model returns the final stream."""

    def __init__(self, n: int, hidden: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = [torch.randn(hidden, hidden, generator=g) / hidden**0.5 for _ in range(n)]
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(_Pair(w) for w in self.w)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = None
        for layer in self.model.layers:
            hidden, residual = layer(hidden, residual)
        return hidden + residual


class _Pair(torch.nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None):
        stream = hidden if residual is None else hidden + residual
        return torch.tanh(stream @ self.w), stream


def _expected(model: _PairLayers, x: torch.Tensor, steer) -> torch.Tensor:
    """The stream computed directly, with ``steer(layer, stream)`` after every layer."""
    for layer, w in enumerate(model.w):
        x = steer(layer, x + torch.tanh(x @ w))
    return x


@pytest.mark.parametrize("always", [False, True], ids=["eager", "compiled"])
def test_the_runner_applies_ablation_norm_preserving_and_actadd_to_its_requests_rows(
    steerer_parts, always
):
    """One step of four requests: ablation then addition (a list of two steerings), a
    norm-preserving addition on generated tokens, a plain vector at ActAdd positions (a prompt
    in its first chunk and one in a later chunk), and an unsteered request. Each request's rows
    get exactly its own operators, in the local hooks' order, on the stream ``hidden +
    residual``; an unsteered row is bit-identical to an unsteered step."""
    Steerer, served, _ = steerer_parts
    vec = SteeringVector.load(served.vectors / "mine.safetensors")
    d = {layer: vec.directions[layer] for layer in (1, 2)}
    q = {layer: v / v.norm() for layer, v in d.items()}
    ablate_then_add = json.dumps(
        [{"expression": "file:mine", "operator": "ablate"}, {"expression": "file:mine:0.5"}]
    )
    norm_kept = json.dumps(
        {"expression": "file:mine:2", "operator": "add_norm_preserving", "positions": "generated"}
    )
    actadd = json.dumps({"expression": "file:mine", "positions": "actadd"})
    requests = [(ablate_then_add, 4, 0), (norm_kept, 3, 2), (actadd, 5, 0), (None, 3, 0)]
    requests += [(actadd, 6, 4)]  # its first tokens were computed in an earlier step
    counts = [2, 2, 3, 2, 2]  # rows 0-1 | 2 (prompt), 3 (generated) | 4-6 | 7-8 | 9-10
    model = _PairLayers(served.num_layers, served.hidden_size)
    steerer = Steerer(model, served, max_tokens=16, always=always)
    run = torch.compile(model, backend="aot_eager", fullgraph=True) if always else model
    x = torch.randn(11, served.hidden_size, generator=torch.Generator().manual_seed(3))
    steerer.prepare_step(_runner([(None, 4, 0)] * 5), counts)
    plain = run(x)
    steerer.prepare_step(_runner(requests), counts)
    got = run(x)

    def steer(layer: int, s: torch.Tensor) -> torch.Tensor:
        if layer not in d:
            return s
        s = s.clone()
        a = s[0:2]
        s[0:2] = a - (a @ q[layer])[:, None] * q[layer] + 0.5 * d[layer]
        g = s[3]
        s[3] = (g + 2 * d[layer]) * g.norm() / (g + 2 * d[layer]).norm()
        s[4] = s[4] + d[layer]  # absolute position 0 of its prompt: the ActAdd position
        return s

    torch.testing.assert_close(got, _expected(model, x, steer))
    assert torch.equal(got[7:9], plain[7:9])  # unsteered: untouched
    assert torch.equal(got[[2, 5, 6, 9, 10]], plain[[2, 5, 6, 9, 10]])  # outside their positions
    assert not torch.allclose(got[[0, 1, 3, 4]], plain[[0, 1, 3, 4]])
    steerer.prepare_step(_runner([(None, 4, 4)] * 5), [1] * 5)  # the next step: none left
    assert steerer.ops == []
    torch.testing.assert_close(run(x[:5]), _expected(model, x[:5], lambda layer, s: s))


@pytest.mark.parametrize("preset", ["json", "love"])  # a template preset and a mean difference
def test_a_preset_not_prepared_for_the_served_model_is_a_clear_400_not_a_crash(
    sm, tmp_path, preset, monkeypatch
):
    """The front end never trains: a preset with no vector for the served model is
    ``PresetNotPreparedError`` (a ``SteeringSpecError``, so HTTP 400), not an AttributeError."""
    from actsteer.errors import PresetNotPreparedError

    monkeypatch.setenv("ACTSTEER_CACHE", str(tmp_path / "cache"))  # no vector from other tests
    bundle = write_bundle(sm, tmp_path / "b.json", prepare=[], progress=False)
    served = ServedModel.from_bundle(bundle)
    with pytest.raises(PresetNotPreparedError, match=f"preset '{preset}' has no vector prepared"):
        compile_spec(served, f"{preset}:2")
    assert isinstance(PresetNotPreparedError("x"), SteeringSpecError)
    prepared = write_bundle(sm, tmp_path / "c.json", prepare=[preset], progress=False)
    assert compile_spec(ServedModel.from_bundle(prepared), f"{preset}:2").generated
