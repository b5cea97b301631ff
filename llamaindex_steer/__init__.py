"""llamaindex_steer: actsteer for LlamaIndex.

``SteerLLM`` is a LlamaIndex LLM over a shared ``actsteer.SteeredModel`` whose steering is
configuration (fields, per-call kwargs, ``with_steering`` copies); ``MiniLMEmbedding`` is a
small offline embedding model for local RAG (all-MiniLM-L6-v2 from a PyPI wheel).
"""

from .embeddings import MiniLMEmbedding
from .llms import SteerLLM

__all__ = ["MiniLMEmbedding", "SteerLLM"]
