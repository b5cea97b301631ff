"""LangChain's standard integration suite for a remote ``ChatSteer`` (``base_url=`` an actsteer
vLLM server), with the same settings and expected failures as the in-process suite."""

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
            "max_tokens": 12,
            "base_url": os.environ["ACTSTEER_TEST_SERVER"],
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        }

    # tools and grammars are not sent to the server yet: the remote engine refuses them with a
    # GenerationError instead of generating unconstrained (vLLM's structured outputs and tool
    # parsers are the planned path), so the suite's tool and structured-output tests are off
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False
