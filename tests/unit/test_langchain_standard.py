"""LangChain's standard unit suite for ChatSteer, on a tiny random model (no download)."""

from __future__ import annotations

from functools import cache
from typing import Any

from conftest import build_tiny
from langchain_tests.unit_tests import ChatModelUnitTests

from actsteer import SteeredModel
from langchain_steer import ChatSteer


@cache
def _tiny() -> SteeredModel:
    return build_tiny("llama", seed=3)


class TestChatSteerUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSteer]:
        return ChatSteer

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"runtime": _tiny()}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False
