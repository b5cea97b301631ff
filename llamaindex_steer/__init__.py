"""llamaindex_steer: actsteer for LlamaIndex.

``SteerLLM`` is a LlamaIndex function-calling LLM over a shared ``actsteer.SteeredModel`` whose
steering is configuration (fields, per-call kwargs, ``with_steering`` copies); tools and agents
(``FunctionAgent``) get grammar-forced calls, structured output a schema grammar. For embeddings use
LlamaIndex's own integrations (``cookbook/llamaindex_rag.py`` loads all-MiniLM-L6-v2 offline
with ``HuggingFaceEmbedding``).
"""

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # the adapters are an extra
    raise ImportError(
        "llamaindex_steer needs llama-index: pip install 'actsteer[llamaindex]'"
    ) from exc


from .llms import SteerLLM

__all__ = ["SteerLLM"]
