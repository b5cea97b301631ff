"""Tool calling: tool specs and ``tool_choice`` (``spec``), the call formats of chat-template
families with their grammars and reply parsers (``formats``), and chats with tools rendered
through the model's own template or actsteer's generic tools block (``render``)."""

from .formats import GENERIC, HERMES, LLAMA, MISTRAL, ToolFormat, format_for
from .spec import InvalidToolCall, ToolCall, ToolSpec, tool_choice, tool_specs

__all__ = [
    "GENERIC",
    "HERMES",
    "LLAMA",
    "MISTRAL",
    "InvalidToolCall",
    "ToolCall",
    "ToolFormat",
    "ToolSpec",
    "format_for",
    "tool_choice",
    "tool_specs",
]
