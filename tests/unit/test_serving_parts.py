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
