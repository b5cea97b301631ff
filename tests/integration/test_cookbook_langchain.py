"""Smoke-runs the LangChain cookbook recipes on the embedded model, with short outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"


SCRIPTS = ("langchain_json_chain.py", "langchain_agent_formatting.py", "langchain_configurable.py")


@pytest.fixture(scope="module")
def outputs() -> dict[str, subprocess.Popen]:
    """All three recipes started at once (one torch thread each), collected by the tests."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": "."}
    procs = {
        script: subprocess.Popen(
            [sys.executable, str(COOKBOOK / script), "--max-tokens", "8"],
            cwd=COOKBOOK.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in SCRIPTS
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


def run(outputs: dict[str, subprocess.Popen], script: str) -> str:
    stdout, stderr = outputs[script].communicate(timeout=300)
    assert outputs[script].returncode == 0, stderr[-3000:]
    return stdout


def test_json_chain(outputs):
    out = run(outputs, "langchain_json_chain.py")
    assert "== system prompt" in out and "== json steering" in out
    assert out.count("parses as JSON") == 4
    assert "steering: json" in out and "prompt tokens saved by steering:" in out


def test_agent_formatting(outputs):
    """create_agent's loop on the embedded model: a forced, well-formed call of the real tool
    with the city from the question, then an answer steered only in the steered runs."""
    out = run(outputs, "langchain_agent_formatting.py")
    assert "== answer step: plain" in out and "== answer step: no-disclaimer:0.5 + concise" in out
    assert out.count("tool calls: get_weather({'city': 'Paris'})") == 2
    assert out.count("tool calls: get_weather({'city': 'Oslo'})") == 2
    assert out.count("  A (") == 4
    assert out.count("steering: None") == 2
    assert out.count("steering: no-disclaimer:0.5 + concise") == 2


def test_configurable(outputs):
    out = run(outputs, "langchain_configurable.py")
    lines = [line for line in out.splitlines() if "->" in line]
    assert len(lines) == 11
    per_call = dict(line.split("->", 1) for line in lines[:4])
    assert len(set(per_call.values())) == 4  # each steering changed the reply
    assert [line.split("->")[1] for line in lines[4:8]] == list(per_call.values())  # batch
