"""langchain_steer: LangChain chat model and LLM over actsteer's steerable local models.

``ChatSteer`` (a ``BaseChatModel``) and ``SteerLLM`` (a ``BaseLLM``) share one loaded
``SteeredModel`` per model id; steering is a field, a per-call option and a configurable field.
"""

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # the adapters are an extra
    raise ImportError(
        "langchain_steer needs langchain-core: pip install 'actsteer[langchain]'"
    ) from exc


from langchain_steer.chat_models import ChatSteer
from langchain_steer.llms import SteerLLM

__all__ = ["ChatSteer", "SteerLLM"]
