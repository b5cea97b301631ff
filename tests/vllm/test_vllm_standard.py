"""LangChain's standard integration suite for a remote ``ChatSteer`` (``base_url=`` an actsteer
vLLM server), with the same settings and expected failures as the in-process suite: tools and
structured output included (the server gets the same grammars and renders the same prompts)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

_path = Path(__file__).resolve().parents[1] / "integration" / "test_langchain_real_standard.py"
_spec = importlib.util.spec_from_file_location("_local_standard_suite", _path)
_local = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_local)  # type: ignore[union-attr]


@pytest.fixture(autouse=True)
def _server_url(server, monkeypatch):
    monkeypatch.setenv("ACTSTEER_TEST_SERVER", server)


class TestRemoteChatSteerIntegration(_local.TestChatSteerIntegration):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "max_tokens": 80,  # as in process: room for a tool call or a JSON joke
            "base_url": os.environ["ACTSTEER_TEST_SERVER"],
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        }
