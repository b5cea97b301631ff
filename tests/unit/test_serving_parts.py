"""The parts of the vLLM backend that need no server: the plugin's spec parsing and its deltas
(the local engine's own), and the remote engine's client-side steering checks."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny, random_vector

from actsteer import Steering, SteeringSpecError, combine
from actsteer.remote import RemoteEngine, RemoteSteering, merged
from actsteer.vllm.bundle import write_bundle
from actsteer.vllm.served import ServedModel, compile_spec, parse_spec


@pytest.fixture(scope="module")
def sm():
    return build_tiny("llama", seed=5)


def test_spec_forms_and_their_errors():
    assert parse_spec("love:2 - formal") == ("love:2 - formal", None, None)
    spec = json.dumps({"expression": "dogs", "coeff": 0.5, "positions": "generated"})
    assert parse_spec(spec) == ("dogs", 0.5, "generated")
    for bad in ("", 3, '{"expression": 3}', '{"expression": "x", "colour": 1}', "{oops"):
        with pytest.raises(SteeringSpecError):
            parse_spec(bad)
    with pytest.raises(SteeringSpecError, match="positions"):
        parse_spec('{"expression": "dogs", "positions": "middle"}')


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
    actadd = json.dumps({"expression": "file:mine", "positions": "actadd"})
    with pytest.raises(SteeringSpecError, match="only available in-process"):
        compile_spec(served, actadd)
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
    assert both == RemoteSteering("dogs:2 + json", None, None)
    with pytest.raises(SteeringSpecError, match="one set of positions"):
        merged([*engine.resolve("dogs", positions="generated"), *engine.resolve("json")])
    with pytest.raises(SteeringSpecError, match="not a SteeringVector"):
        engine.resolve(random_vector(build_tiny("llama", seed=5), [1]))


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
