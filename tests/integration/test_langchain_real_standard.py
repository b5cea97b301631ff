"""LangChain's standard integration suite for ChatSteer on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_steer import ChatSteer

pytestmark = pytest.mark.integration

UNFORCED = (
    "the test needs the model to decide by itself to call get_weather (tool_choice unset); "
    "SmolLM2-135M-Instruct answers in prose instead. Forced calls (tool_choice='any' or a "
    "name) are grammars and pass in test_tool_calling / test_tool_choice"
)
LONG_STRING = (
    "with the optional field the 135M model writes the joke's setup string on until "
    "max_tokens (the grammar keeps it a valid JSON string, but it never closes in 80 tokens)"
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small models decode faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TestChatSteerIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatSteer]:
        return ChatSteer

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # room for a whole tool call (~25 tokens) or a JSON joke (~60); prose replies of
        # the other tests end earlier or are cut here
        return {"max_tokens": 80}

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

    @pytest.mark.xfail(reason=UNFORCED, raises=AssertionError)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=LONG_STRING, raises=OutputParserException)
    def test_structured_output_optional_param(self, model: BaseChatModel) -> None:
        super().test_structured_output_optional_param(model)
