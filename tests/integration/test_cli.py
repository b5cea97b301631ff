"""Every ``actsteer`` subcommand's happy path and one bad input, run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "actsteer.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_presets_lists_every_preset():
    data = json.loads(run("presets", "--json").stdout)
    assert {"json", "no-disclaimer", "love", "dogs"} <= {p["name"] for p in data}
    assert "love" in run("presets").stdout


def test_generate_steered_and_plain(real):
    plain = json.loads(
        run("generate", "I think my neighbour is", "--max-new-tokens", "8", "--json").stdout
    )
    steered = json.loads(
        run(
            "generate",
            "I think my neighbour is",
            "--steer",
            "love:2",
            "--max-new-tokens",
            "8",
            "--json",
        ).stdout
    )
    assert plain["steering"] is None and steered["steering"] == "love:2"
    assert plain["text"] != steered["text"]
    streamed = run(
        "generate",
        "I think my neighbour is",
        "--steer",
        "love:2",
        "--max-new-tokens",
        "8",
        "--stream",
    ).stdout
    assert streamed.strip() == steered["text"].strip()
    spec = '{"expression": "love:2", "operator": "add_norm_preserving"}'  # a server's JSON form
    kept = json.loads(
        run(
            "generate",
            "I think my neighbour is",
            "--steer",
            spec,
            "--max-new-tokens",
            "8",
            "--json",
        ).stdout
    )
    assert kept["steering"] == "love:2 [operator=add_norm_preserving]"
    assert kept["text"] not in (plain["text"], steered["text"])


def test_extract_inspect_export_import(tmp_path, real):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([["I am happy", "I am sad"], ["What joy", "What misery"]]))
    out = tmp_path / "v.safetensors"
    data = json.loads(
        run("extract", "--pairs", str(pairs), "--layers", "5-7", "-o", str(out), "--json").stdout
    )
    assert data["layers"] == [5, 6, 7]
    info = json.loads(run("inspect", str(out), "--json").stdout)
    assert info["hidden_size"] == 576 and info["meta"]["method"] == "mean_diff"
    gguf = tmp_path / "v.gguf"
    run("export", str(out), "--gguf", str(gguf))
    back = tmp_path / "back.safetensors"
    run("import", str(gguf), "-o", str(back))
    assert json.loads(run("inspect", str(back), "--json").stdout)["layers"] == [5, 6, 7]
    text = run("generate", "Hello", "--steer", f"file:{out}:2", "--max-new-tokens", "4").stdout
    assert text.strip()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("generate", "hi", "--steer", "love +"), "cannot parse steering expression"),
        (("generate", "hi", "--steer", "lvoe"), "did you mean 'love'"),
        (
            ("generate", "hi", "--steer", '{"expression": "love", "operator": "x"}'),
            "unknown operator",
        ),
        (("generate", "hi", "--steer", '["love"]'), "list of such objects"),
        (("inspect", "/nonexistent/v.safetensors"), "error"),
        (("extract", "--method", "actadd", "-o", "x.safetensors"), "--positive"),
        (("export", "/nonexistent.safetensors", "--gguf", "o.gguf"), "error"),
        (("extract", "--method", "distill", "-o", "x.safetensors"), "exactly one of --system"),
        (
            ("extract", "--method", "distill", "--template", "French!", "-o", "x.safetensors"),
            "must contain {input}",
        ),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("actsteer: error:")


def test_extract_distill_from_a_template(tmp_path, real):
    inputs = tmp_path / "inputs.txt"
    questions = ["What is rain?", "Name a fruit.", "How far is the Moon?", "Why do cats nap?"]
    questions += ["What is a river?", "Who bakes bread?", "Is snow cold?", "What is tea?"]
    inputs.write_text("\n".join(questions))
    out = tmp_path / "fr.safetensors"
    data = json.loads(
        run(
            "extract",
            "--method",
            "distill",
            "--template",
            "Réponds en français : {input}",
            "--inputs",
            str(inputs),
            "--steps",
            "2",
            "-o",
            str(out),
            "--json",
        ).stdout
    )
    card = data["training"]
    assert data["method"] == "distill" and data["layers"] == list(range(1, 30))
    assert card["steps_run"] == 2 and card["positions"] == "all" and "test_fidelity" in card
    assert "distilled from" in run("inspect", str(out)).stdout


def test_demo_runs_end_to_end(real):
    data = json.loads(run("demo", "--max-new-tokens", "6", "--json").stdout)
    conditions = {r["condition"] for r in data["results"]}
    assert conditions == {
        "unsteered",
        "system prompt",
        "template vector",
        "love (Love-Hate)",
        "dogs",
    }
    s = data["summary"]
    assert s["system prompt"]["prompt_tokens"] > s["template vector"]["prompt_tokens"]


def test_eval_smoke_on_two_prompts(tmp_path, real):
    md = tmp_path / "report.md"
    data = json.loads(
        run(
            "eval",
            "--steer",
            "friendly",
            "--prompts",
            "2",
            "--max-new-tokens",
            "8",
            "--markdown",
            str(md),
            "--json",
        ).stdout
    )
    names = [c["name"] for c in data["conditions"]]
    assert names == ["no steering", "system prompt", "vector", "vector + system prompt"]
    assert data["fidelity"] is not None and data["neutral_kl"] >= 0
    assert all(0.0 <= c["success_rate"] <= 1.0 for c in data["conditions"])
    assert "| condition |" in md.read_text()
    bad = run("eval", "--steer", "file:/nope.safetensors", check=False)
    assert bad.returncode == 2 and "--check is required" in bad.stderr


def test_a_system_prompt_implies_a_chat(real):
    def text(*extra: str) -> str:
        out = run("generate", "Say hello.", "--max-new-tokens", "8", "--json", *extra).stdout
        return json.loads(out)["text"]

    system = ("--system", "Answer in French.")
    assert text(*system) == text("--chat", *system) != text("--chat")
    want = real.generate(
        [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Say hello."},
        ],
        max_new_tokens=8,
    )
    assert text(*system) == want
