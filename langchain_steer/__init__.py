"""langchain_steer: LangChain chat model and LLM over actsteer's steerable local models.

``ChatSteer`` (a ``BaseChatModel``) and ``SteerLLM`` (a ``BaseLLM``) share one loaded
``SteeredModel`` per model id; steering is a field, a per-call option and a configurable field.
"""

from langchain_steer.chat_models import ChatSteer
from langchain_steer.llms import SteerLLM

__all__ = ["ChatSteer", "SteerLLM"]
