"""Smoke run of cookbook/llamaindex_rag.py on the embedded model: it indexes the local documents,
answers plain and steered, and names its sources (short answers, one question, one steering)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_rag_cookbook_runs_offline_and_prints_both_answers_and_sources():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        str(ROOT / "cookbook" / "llamaindex_rag.py"),
        "--question",
        "How much is a return ferry ticket for an adult?",
        "--steering",
        "friendly:3",
        "--max-new-tokens",
        "12",
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "Q: How much is a return ferry ticket for an adult?" in out
    assert "[no steering]" in out and "[friendly:3 [positions=generated]]" in out
    assert "island_ferry.md" in out and "sources:" in out
    answers = [line.strip() for line in out.splitlines() if line.startswith("    '")]
    assert len(answers) == 2 and all(len(a) > 4 for a in answers)
